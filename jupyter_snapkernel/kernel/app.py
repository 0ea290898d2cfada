"""Launch the snapkernel kernel: cold like ipykernel, or as a snapshot build that resumes on restore.

A build runs the setup cells through the real IPython shell before any ZMQ socket exists, then
waits on its control pipe. CRIU checkpoints it there; each restore hands it a new control pipe
carrying the launch's connection file, environment and working directory, and the kernel binds
its sockets and starts as ipykernel would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

from ipykernel.compiler import XCachingCompiler
from ipykernel.kernelapp import IPKernelApp
from ipykernel.zmqshell import ZMQInteractiveShell
from IPython.core.application import BaseIPythonApplication
from traitlets import Type

from snapkernel_engine.control_pipe import PipeChannel
from snapkernel_engine.messages import (
    CellDone,
    CellStarted,
    KernelPipes,
    Ready,
    Resumed,
    ResumeFailed,
    ResumeRequest,
    SetupFailed,
    SetupRequest,
    any_request_from_wire,
    receive_request,
    send,
)

from .. import env_names, hooks
from . import revive, widgets
from .input_recording import InputRecorder, recording_inputs
from .kernel import RecordedCell, SnapKernel, StartInfo, setup_saved_s
from .magics import SnapshotMagics
from .output_recording import rebind_to_kernel_streams, recording
from .process_title import build_title, restored_title, set_process_title, spare_title

BUILD_FLAG = "--snapshot-build"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# Modules the kernel imports while it starts (the debugger's above all): loading them before the
# checkpoint takes ~0.1 s off every restore.
WARM_IMPORTS = ("ipykernel.debugger", "_pydevd_bundle.pydevd_api", "psutil", "tornado.platform.asyncio")


class EventLoopChoice:
    """Stands in for the kernel during a build: holds the GUI event loop the setup cells chose."""

    eventloop: Any = None


class SnapKernelApp(IPKernelApp):
    """IPKernelApp that can prepare everything but its sockets before a checkpoint."""

    name = "snapkernel"
    kernel_class = Type(SnapKernel, klass=SnapKernel, help="The kernel class.").tag(config=True)

    def init_shell(self) -> None:
        super().init_shell()
        if self.shell is not None:
            self.shell.register_magics(SnapshotMagics)

    def note_cold_start(self) -> None:
        """Note why this kernel started cold: in its banner, and with the first executed cell when asked."""
        info = json.loads(os.environ.get(env_names.START) or "{}")
        kernel: SnapKernel = self.kernel
        kernel.start_info = StartInfo(
            mode="cold", reason=info.get("reason"), notebook=info.get("notebook"), named_by=info.get("named_by")
        )
        note = kernel.start_note()
        if note:
            kernel.announce(note, always=bool(info.get("say_why_first")))

    # -- snapshot build -----------------------------------------------------------------------

    def prepare_without_sockets(self) -> ZMQInteractiveShell:
        """Do everything of initialize() that needs no socket; return the shell."""
        BaseIPythonApplication.initialize(self, [])  # config files and profile, no sockets
        self.init_pdb()
        self.init_path()
        # The shell singleton created now is the one the kernel adopts after the restore.
        shell = ZMQInteractiveShell.instance(
            parent=self, profile_dir=self.profile_dir, kernel=None, compiler_class=XCachingCompiler
        )
        self.shell = shell
        shell.configurables.append(self)
        shell.register_magics(SnapshotMagics)
        # GUI integration (%matplotlib inline and friends) asks the app for its kernel: until the real
        # one exists after the restore, a stand-in records the event loop the setup chose.
        self.kernel = EventLoopChoice()
        self.init_gui_pylab()
        self.init_extensions()
        self.init_code()
        return shell

    def run_setup(
        self, shell: ZMQInteractiveShell, request: SetupRequest, channel: PipeChannel, recorded: list[RecordedCell]
    ) -> int | None:
        """Run the request's setup cells up to the next restore point, adding them to `recorded`; return how many
        setup cells have run by then (None when one failed)."""
        if request.first == 0:
            shell.execution_count = 1  # setup cells are In [1] … In [n], as in a fresh kernel
        for offset, source in enumerate(request.cells):
            index = request.first + offset
            send(channel, CellStarted(index))
            outputs: list[dict[str, Any]] = []
            started = time.perf_counter()
            with recording(shell, outputs):
                result = shell.run_cell(source, store_history=True)
            seconds = time.perf_counter() - started
            if not result.success:
                errors = [output for output in outputs if output["output_type"] == "error"]
                text = "\n".join(errors[-1]["traceback"]) if errors else repr(result.error_in_exec)
                send(channel, SetupFailed(index, ANSI_ESCAPE.sub("", text), outputs))
                return None
            recorded.append(RecordedCell(source, result.execution_count, outputs, seconds))
            send(channel, CellDone(index, seconds, outputs))
            long_enough = 0 < request.point_seconds <= seconds
            if offset == len(request.cells) - 1 or index in request.points or long_enough:
                return index + 1
        return request.first

    def resume(
        self,
        request: ResumeRequest,
        setup_record: list[RecordedCell],
        build_environment: revive.BuildEnvironment,
        channel: PipeChannel,
    ) -> None:
        """Finish initialisation after a restore: new environment, connection and sockets."""
        set_process_title(restored_title(request.snapshot, request.notebook or None), "sk kernel")
        revive.apply_environment(request.env, build_environment)
        os.chdir(request.cwd)
        revive.apply_launch(request.connection_file)
        failures = hooks.run_after_restore()
        self.parent_handle = 0  # our parent is the namespace init; the engine ties it to the server
        self.connection_file = request.connection_file
        self.init_connection_file()
        self.init_sockets()
        self.init_heartbeat()
        self.init_io()
        rebind_to_kernel_streams()
        self.init_signal()
        event_loop = self.kernel.eventloop  # chosen by the setup (e.g. %matplotlib inline), kept
        self.init_kernel()
        self.kernel.eventloop = event_loop
        shell = self.shell
        assert shell is not None, "the build ran the setup in this shell"
        shell.kernel = self.kernel
        self.init_shell()
        renamed = widgets.reattach_widgets(self.kernel)
        revive.history_to_disk(shell)
        kernel: SnapKernel = self.kernel
        restore_s, setup_s = round(time.time() - request.restore_started, 3), request.setup_s
        kernel.setup_record = [
            dataclasses.replace(cell, outputs=widgets.renamed_views(cell.outputs, renamed)) for cell in setup_record
        ]
        kernel.start_info = StartInfo(
            mode="restored",
            snapshot=request.snapshot,
            notebook=request.notebook or request.env.get("JPY_SESSION_NAME"),
            named_by=request.notebook_named_by or None,
            restore_s=restore_s,
            from_spare=request.from_spare,
            setup_s=setup_s,
            saved_s=setup_saved_s(setup_s, restore_s),
            hook_failures=failures,
        )
        if failures:
            kernel.announce("snapkernel: after_restore hooks failed:\n" + "\n".join(failures))
        sys.stdout.flush()
        sys.stderr.flush()
        send(channel, Resumed(os.getpid(), restore_s, setup_s, kernel.start_info.saved_s))


@contextlib.contextmanager
def not_recorded(recorder: InputRecorder) -> Iterator[None]:
    """Keep what runs in the block (imports, hooks, reseeding) out of the setup's inputs and seeds."""
    active, seeded = recorder.active, set(hooks.seeded_by_setup)
    recorder.active = False
    try:
        yield
    finally:
        recorder.active = active
        hooks.seeded_by_setup.clear()
        hooks.seeded_by_setup.update(seeded)


class SetupRun:
    """A build kernel's run of the setup cells: restore point after restore point, until a launch resumes it.

    It lives on in every snapshot of the build, so a kernel restored from a restore point carries on from
    there: with the next cells (a build from that point), or as a kernel (a launch).
    """

    def __init__(
        self,
        app: SnapKernelApp,
        shell: ZMQInteractiveShell,
        channel: PipeChannel,
        pipes: KernelPipes,
        launch: dict[str, str],
    ) -> None:
        self.app, self.shell, self.channel, self.pipes = app, shell, channel, pipes
        self.launch_environment = launch  # what the launch gave, before the kernel's own start
        self.setup = revive.EnvironmentChanges()  # what the setup cells did to it so far
        self.kernel = revive.EnvironmentChanges()  # what the kernel's own start did to it
        self.recorded: list[RecordedCell] = []

    def until_resumed(self, request: SetupRequest, recorder: InputRecorder) -> ResumeRequest | int:
        """Run the setup, stopping at each restore point to be checkpointed; return the launch that resumes this
        kernel, or the exit status (1: a cell or hook failed; 0: the launcher went away)."""
        while True:
            with not_recorded(recorder):  # reading the whole environment is no input of the setup
                segment_start = dict(os.environ)
            cells = self.app.run_setup(self.shell, request, self.channel, self.recorded)
            if cells is None:
                return 1
            with not_recorded(recorder):
                self.setup = self.setup.then(revive.EnvironmentChanges.between(segment_start, os.environ))
                quiesce_started = time.perf_counter()
                if not self.checkpointable():
                    return 1
                quiesce_s = time.perf_counter() - quiesce_started
            timed = cells - 1 not in request.points and cells - request.first < len(request.cells)
            # Set before the checkpoint: every restored copy shows it until a launch resumes it.
            set_process_title(spare_title(request.snapshot, request.notebook), "sk spare")
            send(self.channel, Ready(os.getpid(), recorder.report(), cells, timed, self.pipes.by_name(), quiesce_s))
            try:
                next_request = any_request_from_wire(self.channel.receive())  # the checkpoint is taken here
            except EOFError:
                return 0  # a spare kernel whose server went away before handing it a launch: nothing to report
            if isinstance(next_request, ResumeRequest):
                return next_request
            request = next_request
            with not_recorded(recorder):
                if not self.carry_on(request):
                    return 1

    def checkpointable(self) -> bool:
        """Make the kernel ready for a checkpoint (False: a before_snapshot hook failed, and said so)."""
        for module in WARM_IMPORTS:
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
        failures = hooks.run_before_snapshot()
        if failures:
            send(self.channel, SetupFailed(None, "\n".join(failures)))
            return False
        revive.quiesce_libraries()
        self.kernel = revive.EnvironmentChanges.between(self.launch_environment, os.environ).without(self.setup)
        sys.stdout.flush()
        sys.stderr.flush()
        return True

    def carry_on(self, request: SetupRequest) -> bool:
        """Go on with the setup after a checkpoint, in the launch of the request when it names one (a kernel
        restored for a build from this point); False when an after_restore hook failed, and said so."""
        set_process_title(build_title(request.notebook), "sk build")
        if request.env:
            revive.apply_environment(request.env, self.build_environment())
            self.launch_environment = dict(request.env)
        if request.cwd:
            os.chdir(request.cwd)
        failures = hooks.run_after_restore()
        if failures:
            send(self.channel, SetupFailed(None, "after_restore hooks failed:\n" + "\n".join(failures)))
            return False
        return True

    def build_environment(self) -> revive.BuildEnvironment:
        """How the kernel's environment came to differ from its launch's, for each restore."""
        return revive.BuildEnvironment(self.kernel, self.setup)


def build(control_fd: int, report_fd: int) -> int:
    """Run a snapshot build: setup cells and hooks, a checkpoint at each restore point, then a resume."""
    pipes = KernelPipes(stdin=0, stdout=1, stderr=2, control=control_fd, report=report_fd)
    channel = PipeChannel(control_fd, report_fd)
    request = receive_request(channel, SetupRequest)
    set_process_title(build_title(request.notebook), "sk build")
    launch_environment = dict(os.environ)
    app = SnapKernelApp.instance()
    # An on-disk history database would be an open file that grows: CRIU refuses to restore it.
    app.config.HistoryManager.hist_file = ":memory:"
    shell = app.prepare_without_sockets()
    revive.share_event_loop()
    run = SetupRun(app, shell, channel, pipes, launch_environment)
    # Recording goes on across restore points (a kernel restored for a build carries on recording), and ends
    # when a launch resumes the kernel.
    with recording_inputs() as recorder, hooks.recording_seeds():
        outcome = run.until_resumed(request, recorder)
    if isinstance(outcome, int):
        return outcome
    try:
        app.resume(outcome, run.recorded, run.build_environment(), channel)
    except Exception as error:
        send(channel, ResumeFailed(f"{type(error).__name__}: {error}", getattr(error, "errno", None)))
        return 1
    app.start()
    return 0


def main() -> None:
    """Entry point of the kernelspec and of snapshot builds."""
    if BUILD_FLAG in sys.argv:
        fds = dict(arg.lstrip("-").split("=") for arg in sys.argv[1:] if "-fd=" in arg)
        raise SystemExit(build(int(fds["control-fd"]), int(fds["report-fd"])))
    app = SnapKernelApp.instance()
    app.initialize()
    app.note_cold_start()
    app.start()


if __name__ == "__main__":
    main()
