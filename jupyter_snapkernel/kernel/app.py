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
    Ready,
    Resumed,
    ResumeFailed,
    ResumeRequest,
    SetupFailed,
    SetupRequest,
    receive_request,
    request_from_wire,
    send,
)

from .. import env_names, hooks
from . import revive, widgets
from .input_recording import recording_inputs
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
        kernel.start_info = StartInfo(mode="cold", reason=info.get("reason"), notebook=info.get("notebook"))
        note = kernel.start_note()
        if note:
            kernel.announce(note)

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
        self, shell: ZMQInteractiveShell, cells: list[str], channel: PipeChannel
    ) -> list[RecordedCell] | None:
        """Run the setup cells, recording their outputs; None when one fails."""
        recorded = []
        shell.execution_count = 1  # setup cells are In [1] … In [n], as in a fresh kernel
        for index, source in enumerate(cells):
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
        return recorded

    def resume(
        self,
        request: ResumeRequest,
        setup_record: list[RecordedCell],
        build_environment: revive.BuildEnvironment,
        channel: PipeChannel,
    ) -> None:
        """Finish initialisation after a restore: new environment, connection and sockets."""
        set_process_title(restored_title(request.snapshot, request.env.get("JPY_SESSION_NAME")), "sk kernel")
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
            notebook=request.env.get("JPY_SESSION_NAME"),
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


def build(control_fd: int, report_fd: int) -> int:
    """Run a snapshot build: setup cells, hooks, then wait to be checkpointed and resumed."""
    channel = PipeChannel(control_fd, report_fd)
    request = receive_request(channel, SetupRequest)
    set_process_title(build_title(request.notebook), "sk build")
    launch_environment = dict(os.environ)
    app = SnapKernelApp.instance()
    # An on-disk history database would be an open file that grows: CRIU refuses to restore it.
    app.config.HistoryManager.hist_file = ":memory:"
    shell = app.prepare_without_sockets()
    revive.share_event_loop()
    # After the kernel's own start, before the setup: the setup's changes win over each restore's launch.
    before_setup = dict(os.environ)
    with recording_inputs() as recorder, hooks.recording_seeds():
        recorded = app.run_setup(shell, request.cells, channel)
    if recorded is None:
        return 1
    setup_changes = revive.EnvironmentChanges.between(before_setup, os.environ)
    for module in WARM_IMPORTS:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    failures = hooks.run_before_snapshot()
    if failures:
        send(channel, SetupFailed(None, "\n".join(failures)))
        return 1
    revive.quiesce_libraries()
    kernel_changes = revive.EnvironmentChanges.between(launch_environment, os.environ).without(setup_changes)
    sys.stdout.flush()
    sys.stderr.flush()
    # Set before the checkpoint: every restored copy shows it until a launch resumes it.
    set_process_title(spare_title(request.snapshot, request.notebook), "sk spare")
    send(channel, Ready(os.getpid(), recorder.report()))
    try:
        resume_wire = channel.receive()  # the checkpoint is taken while we wait here
    except EOFError:
        return 0  # a spare kernel whose server went away before handing it a launch: nothing to report
    try:
        resume_request = request_from_wire(ResumeRequest, resume_wire)
        app.resume(resume_request, recorded, revive.BuildEnvironment(kernel_changes, setup_changes), channel)
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
