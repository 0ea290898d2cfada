"""Build a notebook's snapshot: run its setup cells in a fresh kernel process, then checkpoint it."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from snapkernel_engine import (
    CheckpointError,
    Manifest,
    RestoreError,
    SnapshotBusy,
    SnapshotError,
    SnapshotNotFound,
    SnapshotStore,
    VerificationError,
)
from snapkernel_engine.chains import chain_bytes
from snapkernel_engine.control_pipe import take_message, write_message
from snapkernel_engine.cuda import uses_nvidia_devices
from snapkernel_engine.inputs import fingerprint_inputs, inputs_folder
from snapkernel_engine.messages import (
    CellDone,
    CellStarted,
    KernelEvent,
    KernelPipes,
    Ready,
    SetupFailed,
    SetupRequest,
    event_from_wire,
    to_wire,
)
from snapkernel_engine.privileges import current, own_user_namespace_command
from snapkernel_engine.process import linked_semaphores_mapped, tree, tree_rss_bytes
from snapkernel_engine.stages import StageClock, describe_stages
from snapkernel_engine.store import new_snapshot_id, store_write_error
from snapkernel_engine.watchdog import watch_for_owner

from .. import env_names
from ..config import DEFAULT_BUILD_TIMEOUT_S, SnapKernelSettings
from .binding import KERNEL_MODULE
from .registries import push_after_build
from .setup_section import SetupSection, read_setup_section
from .state import (
    build_file,
    build_record,
    builds_dir,
    queue_path,
    quota_problem,
    remove_build_record,
    restore_failures_of,
    restore_points,
    write_build_record,
    write_private_json,
)


@dataclass(frozen=True)
class BuildNote:
    """A step of a build that the builder itself reports (not the build kernel): its line of progress."""

    text: str


CHECKPOINTING = BuildNote("checkpointing the kernel")


def point_saved(manifest: Manifest, cells: int, setup_cells: int) -> BuildNote:
    """The progress line of a restore point just published: where it is, and what it takes on disk."""
    where = "end of the setup" if cells == setup_cells else f"restore point after setup cell {cells}/{setup_cells}"
    how = "pages changed since the last point" if manifest.parent is not None else "full image"
    return BuildNote(f"{where}: snapshot {manifest.id}, {manifest.size_bytes / 1e6:.1f} MB ({how})")


WAITING = BuildNote("waiting for the build already running (another server or terminal)")


@dataclass(frozen=True)
class StagesTimed:
    """Where the time of a restore point just published went, stage by stage (snapkernel_engine.stages)."""

    seconds: dict[str, float]


BuildProgress = KernelEvent | BuildNote | StagesTimed
Progress = Callable[[BuildProgress], None]


class BuildError(SnapshotError):
    """The setup cells failed, a hook failed, or the checkpoint was refused."""


class BuildTimeout(BuildError):
    """The build ran past its time limit."""


class BuildCancelled(BuildError):
    """The build was stopped before it finished (its server is stopping): the setup cells did not fail."""


WAIT_POLL_S = 0.2
NO_SPACE = "No space left on device"
FILES_A_SNAPSHOT_NEEDS = 200  # image files of a kernel with some threads and children, and the store's own


def progress_line(event: BuildProgress, cells: int, verbose: bool = False) -> str | None:
    """What a progress event of a build says to whoever watches it (None: nothing worth a line); the stages of
    each restore point only when `verbose`."""
    if isinstance(event, CellStarted):
        return f"running setup cell {event.index + 1}/{cells}"
    if isinstance(event, BuildNote):
        return event.text
    if isinstance(event, StagesTimed) and verbose:
        checkpoint_s = StageClock(event.seconds).checkpoint_s()
        return f"  where the time went: {describe_stages(event.seconds)} (checkpoint {checkpoint_s:.2f} s)"
    return None


def build_environment(notebook: Path, store: SnapshotStore) -> dict[str, str]:
    """The environment a build kernel starts with (the launch's replaces it at each restore)."""
    env = {key: value for key, value in os.environ.items() if key not in {"JPY_PARENT_PID", "PYTHONSTARTUP"}}
    env["JPY_SESSION_NAME"] = str(notebook)
    env[env_names.STORE] = str(store.root)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def _drain(stream: IO[bytes], sink: list[str]) -> None:
    for line in iter(stream.readline, b""):
        sink.append(line.decode(errors="replace"))


def _read_event(fd: int, deadline: float, buffer: bytearray, cancel: threading.Event | None = None) -> KernelEvent:
    """Wait for the build kernel's next event (BuildTimeout, BuildCancelled, EOFError when it closed the pipe)."""
    while (message := take_message(buffer)) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildTimeout
        if cancel is not None and cancel.is_set():
            raise BuildCancelled("the build was cancelled")
        ready, _, _ = select.select([fd], [], [], remaining if cancel is None else min(remaining, WAIT_POLL_S))
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            buffer += chunk
    return event_from_wire(message)


def write_queue_record(store: SnapshotStore, setup_hashes: list[str]) -> None:
    """Record this server's queue of builds for a store, in order, for kernels to read (none: remove it)."""
    path = queue_path(store, os.getpid())
    if not setup_hashes:
        path.unlink(missing_ok=True)
        return
    store.ensure_layout()
    write_private_json(path, {"pid": os.getpid(), "queue": setup_hashes})


def build_snapshot(
    notebook: str | Path,
    store: SnapshotStore,
    *,
    section: SetupSection | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_BUILD_TIMEOUT_S,
    gpu_state: bool | None = None,
    cancel: threading.Event | None = None,
    point_seconds: float | None = None,
    from_top: bool = False,
) -> Manifest:
    """Build and publish the snapshot of a notebook's setup section; raise BuildError on failure.

    The build goes on from the latest restore point of the setup that this store holds and that still
    matches (unless `from_top`), and leaves a restore point after each marked cell and each cell that ran
    for `point_seconds` (default: SnapKernelSettings.restore_point_seconds). Whether the snapshot keeps GPU
    state: the notebook's own choice (metadata ``snapkernel.gpu_state``), else `gpu_state`, else the
    administrator's setting (SnapKernelSettings.gpu_state). When another process is building the same
    setup section, this waits for that build and returns its snapshot (or fails with its error). Setting
    `cancel` stops the build kernel within 0.2 s while it runs the setup cells (BuildCancelled).
    """
    notebook = Path(notebook).resolve()
    section = section or read_setup_section(notebook)
    if section is None:
        raise BuildError(f"{notebook.name} has no setup cell: tag one `snapshot` or start it with %%snapshot")
    if section.gpu_state is not None:
        gpu_state = section.gpu_state
    elif gpu_state is None:
        gpu_state = SnapKernelSettings().gpu_state
    if point_seconds is None:
        point_seconds = SnapKernelSettings().restore_point_seconds
    plan = PointPlan(list(section.marked), point_seconds, from_top)
    try:
        store.ensure_layout()
        builds_dir(store).mkdir(mode=0o700, exist_ok=True)
        lock_fd = os.open(build_file(store, section.setup_hash, "lock"), os.O_CREAT | os.O_RDWR, 0o600)
    except OSError as error:
        raise BuildError(store_write_error(error, "a build cannot start")) from None
    try:
        other_build = _other_build_result(lock_fd, notebook, store, section, progress, timeout, cancel)
        if other_build is not None:
            return other_build
        return _recorded_build(notebook, store, section, progress, (timeout, plan), gpu_state, cancel)
    finally:
        os.close(lock_fd)


def _recorded_build(
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    progress: Progress | None,
    limits: tuple[float, PointPlan],
    gpu_state: bool,
    cancel: threading.Event | None,
) -> Manifest:
    """Run the build (its lock held), with its build record saying building, then failed or done."""
    # Rebuilds for restores that failed on a changed input keep their count (the backoff of the next one).
    restore_failures = restore_failures_of(build_record(store, section.setup_hash))
    record = {"restore_failures": restore_failures} if restore_failures else {}
    write_build_record(store, section.setup_hash, state="building", pid=os.getpid(), started=time.time(), **record)
    try:
        manifest = _build_from_latest_point(notebook, store, section, progress or (lambda event: None), limits,
                                            gpu_state, cancel)  # fmt: skip
    except (BuildCancelled, KeyboardInterrupt):
        # Not a failure of the setup cells: automatic builds may try them again.
        remove_build_record(store, section.setup_hash)
        raise
    except BaseException as error:
        write_build_record(
            store,
            section.setup_hash,
            state="failed",
            error=str(error),
            finished=time.time(),
            fingerprint=store.fingerprint_digest(),  # automatic builds retry once this changes
            **record,
        )
        raise
    if record:  # kept until a restore of the new snapshot succeeds
        write_build_record(store, section.setup_hash, state="rebuilt", finished=time.time(), **record)
    else:
        remove_build_record(store, section.setup_hash)
    return manifest


def _other_build_result(
    lock_fd: int,
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    progress: Progress | None,
    timeout: float,
    cancel: threading.Event | None,
) -> Manifest | None:
    """Take the setup section's build lock; if another process held it, return what its build published."""
    waiting_since: float | None = None
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if waiting_since is None:  # another process builds these cells: wait for it
                waiting_since = time.time()
                if progress is not None:
                    progress(WAITING)
            if cancel is not None and cancel.is_set():
                raise BuildCancelled("the build was cancelled while it waited for another build") from None
            if time.monotonic() > deadline:
                raise BuildTimeout(
                    f"another build of {notebook.name} was still running after {timeout:.0f} s: "
                    "wait for it, or stop it and build again"
                ) from None
            time.sleep(WAIT_POLL_S)
    if waiting_since is None:
        return None
    folder = str(notebook.resolve().parent)
    # The same cells built for a notebook in another folder, from files of its own, are not this build's result.
    published = store.newest_usable(
        section.setup_hash,
        lambda manifest: [] if inputs_folder(manifest.inputs) in {None, folder} else ["built for another folder"],
    )
    if published is not None and datetime.fromisoformat(published.created).timestamp() >= waiting_since - 1:
        return published
    record = build_record(store, section.setup_hash)
    if record and record.get("state") == "failed" and float(record.get("finished", 0)) >= waiting_since:  # type: ignore[arg-type]
        raise BuildError(f"the build of {notebook.name} that was running failed: {record.get('error')}")
    return None  # it was stopped before it published anything: build here


def keep_within_limits(store: SnapshotStore, manifest: Manifest, quota_bytes: int, max_snapshots: int) -> None:
    """Keep the store within its quota and count once `manifest` is published (0: no limit).

    A snapshot larger than the whole quota with the restore points it needs is deleted at once, with those of
    its points that no other snapshot needs and that do not fit either, without evicting the others for it;
    it is recorded as a failed build that automatic builds do not repeat until the quota or the cells
    change; this raises BuildError saying so.
    """
    chain = store.chain(manifest)
    problem = quota_problem(chain_bytes(chain), quota_bytes)
    if problem is None:
        store.clean_up(quota_bytes=quota_bytes or None, max_snapshots=max_snapshots or None)
        return
    others, deleted = store.list(), set()
    for position, member in enumerate(chain):
        needed = any(other.parent == member.id and other.id not in deleted for other in others)
        if needed or quota_problem(chain_bytes(chain[position:]), quota_bytes) is None:
            break  # what is left fits, or other snapshots need it: a start can restore it
        with contextlib.suppress(SnapshotBusy, SnapshotNotFound):  # a busy one goes at the next gc
            deleted.update(store.delete(member.id))
    write_build_record(
        store, manifest.key, state="failed", error=problem, finished=time.time(),
        fingerprint=store.fingerprint_digest(), quota_bytes=quota_bytes,
    )  # fmt: skip
    raise BuildError(problem)


def build_within_limits(
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    settings: SnapKernelSettings,
    *,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
) -> Manifest:
    """Build with the administrator's settings (time limit, GPU state), then keep the store within its quota
    and count (`keep_within_limits`): the one build of a server (automatic, or asked for) and of a check.

    A BuildError of the housekeeping fails the build; other housekeeping errors only add a note to its
    progress: the snapshot is there all the same.
    """
    manifest = build_snapshot(
        notebook, store, section=section, progress=progress, timeout=settings.build_timeout,
        gpu_state=settings.gpu_state, cancel=cancel, point_seconds=settings.restore_point_seconds,
    )  # fmt: skip
    try:
        keep_within_limits(store, manifest, settings.quota_bytes, settings.max_snapshots)
    except BuildError:
        raise
    except (SnapshotError, OSError) as error:
        if progress is not None:
            progress(BuildNote(f"store housekeeping failed: {error}"))
    pushed = push_after_build(settings, store, manifest)  # a failed push leaves the snapshot here, and says so
    if pushed is not None and progress is not None:
        progress(BuildNote(pushed))
    return manifest


@dataclass
class BuildKernel:
    """A build kernel: a new process, or one restored from a restore point; its pipe ends and its output."""

    pid: int
    control: int  # we write its requests here
    report: int  # we read its events here
    log: list[str]
    stop: Callable[[], int]  # kill its tree; return its exit status
    ended: Callable[[float], int | None]  # wait at most that long for its end; its exit status (None: runs)


def _new_build_kernel(notebook: Path, environment: dict[str, str]) -> BuildKernel:
    """Start a build kernel in the notebook's folder."""
    control_read, control_write = os.pipe()
    report_read, report_write = os.pipe()
    process = _start_build_kernel(notebook, environment, control_read, report_write)
    os.close(report_write)
    os.close(control_read)
    log: list[str] = []
    for stream in (process.stdout, process.stderr):
        threading.Thread(target=_drain, args=(stream, log), daemon=True).start()

    def ended(timeout: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=timeout)
        return process.returncode

    return BuildKernel(process.pid, control_write, report_read, log, lambda: _kill_build_kernel(process), ended)


def _restored_build_kernel(store: SnapshotStore, point: Manifest) -> BuildKernel:
    """Restore a restore point's kernel to go on with the setup from there (it waits for its SetupRequest)."""
    control_read, control_write = os.pipe()
    report_read, report_write = os.pipe()
    stdin_read, stdin_write = os.pipe()  # a pipe, as a new build kernel's: the next checkpoint replaces it
    outputs = [os.pipe(), os.pipe()]
    handed = KernelPipes(
        stdin=stdin_read, stdout=outputs[0][1], stderr=outputs[1][1], control=control_read, report=report_write
    ).by_name()
    try:
        tree = store.restore_snapshot(point.id, key=point.key, pipes=handed)
    except BaseException:
        for fd in (control_write, report_read, stdin_write, outputs[0][0], outputs[1][0]):
            os.close(fd)
        raise
    finally:
        for fd in handed.values():
            os.close(fd)
    log: list[str] = []
    for read_end, _ in outputs:
        threading.Thread(target=_drain, args=(os.fdopen(read_end, "rb"), log), daemon=True).start()

    def stop() -> int:
        tree.kill()
        os.close(stdin_write)
        return tree.wait()

    def ended(timeout: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            tree.wait(timeout)
        return tree.poll()

    return BuildKernel(tree.pid, control_write, report_read, log, stop, ended)


@dataclass
class PointPlan:
    """Where a build stops for restore points: marked cells, and cells that ran this long (0: none for time);
    and whether it runs the setup from the top even where a restore point of it matches."""

    marked: list[int]
    seconds: float
    from_top: bool = False


def _build_from_latest_point(
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    progress: Progress,
    limits: tuple[float, PointPlan],
    gpu_state: bool,
    cancel: threading.Event | None,
) -> Manifest:
    """Build from the latest matching restore point of this store, or from the top when there is none, when
    asked to, or when the point cannot be restored or checkpointed again (saying why)."""
    points = [] if limits[1].from_top else list(restore_points([store], section, notebook, os.environ).values())
    base = next((point.manifest for point in reversed(points) if point.cells < len(section.cells)), None)
    if base is not None and current().mode != "root":
        # Restored by another user than root, a tree lives in a user namespace of its own that CRIU cannot dump
        # from outside: going on would run the cells after the point only to fail at their checkpoint.
        progress(BuildNote(f"building from the top: going on from a restore point needs root ({current().mode} mode)"))
        base = None
    # A checkpoint of a restored tree has failed once under heavy load, CRIU's RPC answering nothing ("Unexpected
    # response type 0"): a second try from the point is cheaper than the whole setup again.
    for attempt in range(2 if base is not None else 0):
        assert base is not None
        try:
            return _run_build(notebook, store, section, progress, limits, gpu_state, cancel, base)
        except (RestoreError, CheckpointError, VerificationError, SnapshotNotFound) as error:
            lines = str(error).splitlines()
            said = lines[0] + (f"; CRIU's log ends: {lines[-1].strip()}" if len(lines) > 1 else "")
            again = attempt == 0 and isinstance(error, CheckpointError)
            then = "trying the restore point once more" if again else "building from the top"
            progress(BuildNote(f"could not go on from restore point {base.id} ({said}): {then}"))
            if not again:
                break
    return _run_build(notebook, store, section, progress, limits, gpu_state, cancel)


def _run_build(
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    progress: Progress,
    limits: tuple[float, PointPlan],
    gpu_state: bool,
    cancel: threading.Event | None = None,
    base: Manifest | None = None,
) -> Manifest:
    """Run the setup cells in a build kernel (new, or restored from the restore point `base`), checkpoint it at
    each restore point into the store, and return the last one's snapshot."""
    environment = build_environment(notebook, store)
    if base is not None:
        progress(BuildNote(f"restoring the build kernel from the restore point after setup cell {cells_of(base)}"))
    kernel = _new_build_kernel(notebook, environment) if base is None else _restored_build_kernel(store, base)
    # The kernel must not outlive this process, even when it is SIGKILLed (the kernel cannot carry a
    # parent-death signal: its snapshot would restore it too).
    watchdog = watch_for_owner(kernel.pid)
    try:
        return _checkpoint_each_point(kernel, notebook, store, section, progress, limits, gpu_state, cancel, base,
                                      environment)  # fmt: skip
    finally:
        kernel.stop()
        watchdog.wait()
        for fd in (kernel.control, kernel.report):
            os.close(fd)


def cells_of(point: Manifest) -> int:
    """How many setup cells a restore point ran (a snapshot made before restore points: all of them)."""
    return int(point.labels.get("cells", 0))


def _checkpoint_each_point(
    kernel: BuildKernel,
    notebook: Path,
    store: SnapshotStore,
    section: SetupSection,
    progress: Progress,
    limits: tuple[float, PointPlan],
    gpu_state: bool,
    cancel: threading.Event | None,
    base: Manifest | None,
    environment: dict[str, str],
) -> Manifest:
    """Send the build kernel the setup, restore point after restore point; publish each point's snapshot."""
    timeout, plan = limits
    deadline = time.monotonic() + timeout
    done, parent = (cells_of(base), base) if base is not None else (0, None)
    setup_s = float(base.labels.get("setup_s", 0)) if base is not None else 0.0
    # A kernel restored from a point takes this build's environment and folder, as a launch would.
    env, cwd = (environment, str(notebook.parent)) if base is not None else ({}, "")
    segment_s = 0.0  # since the last restore point
    while True:
        request = SetupRequest(
            list(section.cells[done:]), notebook.name, new_snapshot_id(), done, plan.marked, plan.seconds, env, cwd
        )
        env, cwd = {}, ""
        write_message(kernel.control, to_wire(request))
        started = time.perf_counter()
        ready = _await_ready(kernel, notebook, section, progress, (timeout, deadline), cancel)
        segment_s += time.perf_counter() - started
        done, final = ready.cells, ready.cells == len(section.cells)
        if ready.timed and any(uses_nvidia_devices(member) for member in tree(kernel.pid)):
            continue  # GPU setups get restore points at marked cells only: each costs a CUDA checkpoint
        setup_s += segment_s
        clock = StageClock({"setup": segment_s - ready.quiesce_s, "quiesce": ready.quiesce_s})
        segment_s = 0.0
        progress(CHECKPOINTING)
        inputs = ready.inputs or {}
        manifest = _publish(
            store, kernel.pid, section.prefix_hash(done),
            labels={"notebook": str(notebook), "cells": str(done), "setup_cells": str(len(section.cells)),
                    "setup_s": f"{setup_s:.3f}"},
            pipes=ready.pipes,
            leave_running=not final, gpu_state=gpu_state, snapshot_id=request.snapshot, parent=parent,
            inputs=fingerprint_inputs(
                inputs.get("files", []), inputs.get("variables", []), environment,
                folder=str(notebook.resolve().parent), relative=inputs.get("relative", []),
            ),
            clock=clock,
        )  # fmt: skip
        progress(point_saved(manifest, done, len(section.cells)))
        progress(StagesTimed(clock.seconds))
        if final:
            return manifest
        parent = manifest


def _start_build_kernel(
    notebook: Path, environment: dict[str, str], control_fd: int, report_fd: int
) -> subprocess.Popen[bytes]:
    """Start the build kernel in the notebook's folder, holding the two control pipe ends it uses."""
    # Without a grant CRIU can only dump a kernel that runs in a user namespace of its own.
    prefix = own_user_namespace_command() if current().mode == "user-namespace" else []
    command = [
        *prefix, sys.executable, "-m", KERNEL_MODULE, "--snapshot-build",
        f"--control-fd={control_fd}", f"--report-fd={report_fd}",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(control_fd, report_fd),
        cwd=notebook.parent,
        env=environment,
        start_new_session=True,  # CRIU dumps only a tree whose root leads its own session
    )


def _await_ready(
    kernel: BuildKernel,
    notebook: Path,
    section: SetupSection,
    progress: Progress,
    limits: tuple[float, float],
    cancel: threading.Event | None,
) -> Ready:
    """Follow the build kernel's events until it is ready for its next checkpoint; raise BuildError saying what
    failed. `limits` are the build's time limit and its deadline (time.monotonic())."""
    timeout, deadline = limits
    buffer = bytearray()
    running = "the kernel's start"
    running_cell: int | None = None
    cells_done = 0
    while True:
        try:
            event = _read_event(kernel.report, deadline, buffer, cancel)
        except BuildTimeout:
            raise BuildTimeout(
                f"{running} of {notebook.name} was still running when the build's limit of {timeout:.0f} s "
                "ran out: raise the limit (SnapKernelSettings.build_timeout, or build --timeout) or make it faster"
            ) from None
        except EOFError:
            returncode = kernel.ended(10)
            raise _ended_early(returncode, notebook, section, running_cell, cells_done, kernel.log) from None
        progress(event)
        if isinstance(event, CellStarted):
            running, running_cell = f"setup cell {event.index + 1}", event.index
        elif isinstance(event, CellDone):
            running_cell, cells_done = None, event.index + 1
        elif isinstance(event, SetupFailed):
            where = f"setup cell {event.index + 1}" if event.index is not None else "a hook"
            raise BuildError(f"{where} of {notebook.name} failed:\n{event.error}")
        elif isinstance(event, Ready):
            return event


def _kill_build_kernel(kernel: subprocess.Popen[bytes]) -> int:
    """Kill the build kernel's tree, then remove the named semaphores it made (those of a refused 'spawn' or
    'forkserver' pool): its multiprocessing resource tracker, killed with it, cannot."""
    # Only the process that created a semaphore maps it under glibc's unlinked temporary name.
    made = [path for member in tree(kernel.pid) for path in linked_semaphores_mapped(member)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(kernel.pid, signal.SIGKILL)
    returncode = kernel.wait()
    for path in made:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return returncode


def _ended_early(
    returncode: int | None,
    notebook: Path,
    section: SetupSection,
    running_cell: int | None,
    cells_done: int,
    log: list[str],
) -> BuildError:
    """The error for a build kernel that ended before the snapshot: it names the setup cell that was running."""
    if running_cell is not None:
        lines = [line.strip() for line in section.cells[running_cell].splitlines() if line.strip()]
        first = lines[0] if lines else ""
        shown = first if len(first) <= 60 else first[:57] + "..."
        where = f"setup cell {running_cell + 1} of {notebook.name} (`{shown}`)"
    elif cells_done:
        where = f"a before_snapshot hook of {notebook.name} (after the setup cells)"
    else:
        where = f"the start of {notebook.name}'s build kernel"
    if returncode is None:
        how, hint = "it closed its pipe", "is something in the setup closing file descriptors?"
    elif returncode < 0:
        how = f"killed by {signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode}"
        hint = "was it out of memory, or did the code crash?"
    else:
        how = f"exit status {returncode}"
        hint = "setup cells must not end their process (os._exit, sys.exit in a thread): remove that call"
    tail = "".join(log[-20:]).rstrip()
    return BuildError(
        f"the build kernel ended ({how}) while {where} ran, before the snapshot: {hint}" + (f"\n{tail}" if tail else "")
    )


def _publish(store: SnapshotStore, pid: int, key: str, **options: Any) -> Manifest:
    """Checkpoint the build kernel into the store; a full disk or an unwritable store is one clear BuildError."""
    needed = tree_rss_bytes(pid)
    try:
        return store.take_snapshot(pid, key, **options)
    except (OSError, CheckpointError) as error:
        full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or NO_SPACE in str(error)
        if isinstance(error, CheckpointError) and not full:
            raise
        if not full:
            assert isinstance(error, OSError)
            raise BuildError(store_write_error(error, "could not write the snapshot")) from error
        raise BuildError(
            f"could not write the snapshot into the snapshot store: {_what_ran_out(store, needed)}"
        ) from error


def _what_ran_out(store: SnapshotStore, needed: int) -> str:
    """Say whether a full store ran out of bytes or of inodes (room for new files), and what to do; no path."""
    usage = os.statvfs(store.root)
    free = usage.f_bavail * usage.f_frsize
    if usage.f_files and usage.f_favail < FILES_A_SNAPSHOT_NEEDS:  # 0 f_files: a file system without an inode limit
        return (
            f"its file system has run out of inodes (room for {usage.f_favail} more files; a snapshot needs about "
            f"{FILES_A_SNAPSHOT_NEEDS}, while {free / 1e6:.0f} MB are free): remove files there (`jupyter snapkernel "
            "gc`) or use another store (SNAPKERNEL_STORE)"
        )
    return (
        f"{NO_SPACE} (it needs about {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB are free): free space there "
        "(`jupyter snapkernel gc`) or use another store (SNAPKERNEL_STORE)"
    )
