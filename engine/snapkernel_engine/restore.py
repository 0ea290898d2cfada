"""Restore a CRIU image in fresh PID and mount namespaces and control the restored tree."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from . import process
from .control_pipe import take_message
from .criu import find_criu, log_excerpt, pycriu_search_path, require_supported
from .cuda import CudaDriver, CudaError, resume_restored, system_driver
from .errors import CriuUnavailable, RestoreError, RestoreTimeout
from .failures import OUT_OF_MEMORY_MARK
from .privileges import in_user_namespace_command, restores_in_user_namespace
from .restore_init import RESTORE_LOG

INIT_LOG = "init.log"
BUG_MARK = "BUG at "
BUG_POLL_S = 0.25
DEFAULT_TIMEOUT_S = 120.0
# The namespace init needs the standard library, the engine and pycriu (both on PYTHONPATH) only: no
# `site` (the venv's .pth files cost as long as the rest of Python's start), no current directory on sys.path.
INIT_PYTHON_FLAGS = ("-S", "-P")


class RestoredTree:
    """Handle to a restored process tree living in its own PID namespace."""

    def __init__(
        self,
        launcher: subprocess.Popen[bytes],
        init_pid: int,
        pid: int,
        ns_pid: int,
        pages_loaded: threading.Event | None = None,
        cuda_pids: Sequence[int] = (),
        cuda_driver: CudaDriver | None = None,
    ) -> None:
        self._launcher = launcher
        self.init_pid = init_pid
        self.pid = pid
        self.ns_pid = ns_pid
        self._killed = False
        #: CRIU's own restore time, from its stats (None: not known), for benchmarks and reports.
        self.criu_restore_s: float | None = None
        # The processes (by their PIDs in the image) whose GPU state is still in host memory, and its driver.
        self._cuda_pids = list(cuda_pids)
        self._cuda_driver = cuda_driver
        if pages_loaded is None:
            pages_loaded = threading.Event()
            pages_loaded.set()
        #: Set once all memory is in place (at once for eager restores; lazy ones fill it in later).
        self.pages_loaded = pages_loaded

    def __repr__(self) -> str:
        return f"<RestoredTree pid={self.pid} ns_pid={self.ns_pid} returncode={self.returncode}>"

    @property
    def returncode(self) -> int | None:
        """The root's exit code once the tree has ended: 128 + N when signal N ended the root,
        -9 when the tree was killed through this handle."""
        if self._launcher.returncode is None:
            return None
        return -signal.SIGKILL if self._killed else self._launcher.returncode

    def poll(self) -> int | None:
        """Return the exit code if the tree has ended, else None."""
        self._launcher.poll()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the tree to end and return the root's exit code."""
        self._launcher.wait(timeout)
        return self.returncode  # type: ignore[return-value]

    def ended(self) -> bool:
        """Whether the tree's root has ended, even where its launcher has not noticed yet (a kill from outside)."""
        return self.poll() is not None or not process.is_alive(self.pid)

    def members(self) -> list[int]:
        """Return the host PIDs of every live process of the restored tree."""
        if self.poll() is not None:
            return []
        return list(process.descendants(self.init_pid))

    def send_signal(self, signum: int) -> None:
        """Deliver a signal to every process of the tree."""
        for member in self.members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signum)

    @property
    def gpu_state_pending(self) -> bool:
        """Whether GPU state of this tree still waits in host memory for ``put_gpu_state_back()``."""
        return bool(self._cuda_pids)

    def put_gpu_state_back(self) -> None:
        """Put the GPU state a restore deferred back on the GPU and unlock CUDA (nothing when none waits).

        Raise RestoreError when the driver fails; the tree is killed then: no process stays locked.
        """
        if not self._cuda_pids:
            return
        assert self._cuda_driver is not None, "GPU state without a driver"
        try:
            _put_gpu_state_back(self, self._cuda_pids, self._cuda_driver)
        except BaseException:
            self.kill()
            raise
        self._cuda_pids = []

    def resume(self) -> None:
        """Continue a tree restored stopped (SIGCONT to every process; a running tree is unaffected)."""
        self.send_signal(signal.SIGCONT)

    def stopped(self) -> bool:
        """Whether every restored process is stopped (none runs a thread): true of a tree restored stopped."""
        if self.poll() is not None:
            return False
        # From the restored root down: a lazy restore's page daemon is the init's child too, and runs.
        return all(process.is_stopped(member) for member in process.tree(self.pid))

    def terminate(self) -> None:
        """Ask every process of the tree to terminate (SIGTERM)."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the whole tree at once and reap it: no process or zombie remains."""
        if self.poll() is None:
            try:
                # SIGKILL to a namespace's init makes the kernel kill and reap every member.
                os.kill(self.init_pid, signal.SIGKILL)
                self._killed = True
            except ProcessLookupError:
                pass
        self.wait()


def _read_status(fd: int, launcher: subprocess.Popen[bytes], timeout: float, restore_log: Path) -> dict[str, Any]:
    """Read the init's first report, or fail when it dies, times out, or CRIU hits a BUG."""
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    while (report := take_message(buffer)) is None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], min(remaining, BUG_POLL_S))
        if not ready:
            # After a BUG in its restorer CRIU waits forever for the task that died: do not wait with it.
            if _mentions(restore_log, BUG_MARK):
                raise RestoreError("CRIU failed in the middle of the restore and was stopped", log_excerpt(restore_log))
            continue
        chunk = os.read(fd, 1)  # byte-wise: the next message belongs to the pages watcher
        if not chunk:  # the init exited before its report
            launcher.wait()
            return {}
        buffer += chunk
    return report


def _mentions(path: Path, text: str) -> bool:
    """Tell whether a (log) file contains `text`."""
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def _watch_pages(fd: int, loaded: threading.Event) -> None:
    """Wait for the init's report that lazy pages are all in (or its exit), then set `loaded`."""
    # The launcher keeps a copy of the pipe's write end, so the report, not EOF, is the signal.
    buffer = bytearray()
    try:
        while chunk := os.read(fd, 4096):
            buffer += chunk
            while (message := take_message(buffer)) is not None:
                if message.get("pages_loaded"):
                    return
    finally:
        os.close(fd)
        loaded.set()


LAZY_NEEDS_ROOT = (
    "lazy restore needs root: CRIU disables userfaultfd with --unprivileged (vm.unprivileged_userfaultfd is 0)"
)


@functools.lru_cache(maxsize=4)
def lazy_restore_supported(criu_binary: str | None = None) -> bool:
    """Tell whether this kernel and CRIU can restore memory lazily (userfaultfd, non-cooperative; root only)."""
    if restores_in_user_namespace():
        return False
    binary = find_criu(criu_binary)
    result = subprocess.run([binary, "check", "--feature", "uffd-noncoop"], capture_output=True, check=False)
    return result.returncode == 0


def _host_pid_of(init_pid: int, ns_pid: int) -> int:
    """Find the host PID of the init's child that is `ns_pid` inside the namespace."""
    for child in process.children(init_pid):
        try:
            if process.innermost_pid(child) == ns_pid:
                return child
        except OSError:
            continue
    raise RestoreError(f"restored process {ns_pid} is not a child of the namespace init {init_pid}")


def restore_tree(
    images_dir: Path,
    work_dir: Path,
    *,
    inherit_fds: Mapping[str, int] | None = None,
    criu_binary: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    lazy: bool = False,
    tie_to_caller: bool = True,
    cuda_pids: Sequence[int] = (),
    cuda_driver: CudaDriver | None = None,
    own_network: bool = False,
    stopped: bool = False,
    defer_gpu: bool = False,
) -> RestoredTree:
    """Restore the image in `images_dir` into new PID and mount namespaces.

    `inherit_fds` maps CRIU keys of the dumped tree's pipes (``pipe:[INODE]``) to fds of this
    process that replace them in the restored tree. `images_dir` is only read; logs go to
    `work_dir`, which must be private to this restore. With `lazy`, the tree resumes before its
    memory is copied in: `images_dir` and `work_dir` must stay until ``tree.pages_loaded`` is set.
    With `tie_to_caller`, the tree is killed when this process exits. `cuda_pids` are the processes
    (by their PIDs in the image) whose GPU state the dump moved to host memory: it is put back on the
    GPU before this returns, through `cuda_driver` (default: the machine's driver). `own_network`
    restores into a new, empty network namespace too: needed to run several restores of an image
    whose processes bound the same abstract unix socket (CUDA processes do), at the price of having
    no network but a loopback of their own. With `stopped`, every restored process is left stopped
    (CRIU's --leave-stopped): no thread of it runs until ``tree.resume()``. With `defer_gpu`, the GPU state
    stays in the processes' host memory (CUDA locked) until ``tree.put_gpu_state_back()``: a tree kept in
    reserve then holds no GPU memory.

    As root the tree keeps host credentials (new PID + mount namespaces only); any other user restores
    into new user + PID + mount namespaces with CRIU holding only checkpoint_restore and setpcap there,
    so the tree runs with that user's own uid and no capabilities.
    """
    unprivileged = restores_in_user_namespace()
    if lazy and unprivileged:
        raise RestoreError(LAZY_NEEDS_ROOT)
    driver = _cuda_driver_for(cuda_pids, cuda_driver)
    binary = find_criu(criu_binary)
    require_supported(binary)
    command = _launcher_command(binary, images_dir, work_dir, unprivileged, own_network)
    inherit_fds = dict(inherit_fds or {})
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    status_read, status_write = os.pipe()
    command += [
        f"--status-fd={status_write}", *(f"--inherit={key}={fd}" for key, fd in inherit_fds.items()),
        *(["--lazy"] if lazy else []), *(["--unprivileged"] if unprivileged else []),
        *(["--loopback-up"] if own_network else []), *(["--leave-stopped"] if stopped else []),
    ]  # fmt: skip
    passed = [status_write, *inherit_fds.values()]
    owner_fd = os.pidfd_open(os.getpid()) if tie_to_caller else None
    if owner_fd is not None:
        command.append(f"--watch-fd={owner_fd}")
        passed.append(owner_fd)
    oom_kills_before = process.memory_oom_kills()
    try:
        launcher = _start_launcher(command, passed, work_dir)
    finally:
        os.close(status_write)
        if owner_fd is not None:
            os.close(owner_fd)
    pages_loaded, status = _await_restore(status_read, launcher, timeout, work_dir, images_dir, oom_kills_before)
    tree = _restored_tree(launcher, int(str(status["pid"])), pages_loaded, list(cuda_pids), driver)
    tree.criu_restore_s = status.get("criu_restore_s")
    if not defer_gpu:
        tree.put_gpu_state_back()
    return tree


def _cuda_driver_for(cuda_pids: Sequence[int], cuda_driver: CudaDriver | None) -> CudaDriver | None:
    """The driver that puts a snapshot's GPU state back (None: it holds none); refuse a machine without one."""
    driver = cuda_driver if cuda_driver is not None else (system_driver() if cuda_pids else None)
    if cuda_pids and driver is None:
        raise RestoreError("the snapshot holds GPU state, but this machine has no CUDA driver with the checkpoint API")
    return driver


def _launcher_command(binary: str, images_dir: Path, work_dir: Path, unprivileged: bool, net: bool) -> list[str]:
    """The command that starts the restore helper in new namespaces (user ones too, unless this is root)."""
    if unprivileged:
        prefix = in_user_namespace_command(net=net)
    else:
        unshare = shutil.which("unshare")
        if unshare is None:
            raise CriuUnavailable("`unshare` (util-linux) is required to restore into new namespaces")
        namespaces = ["--pid", "--mount", *(["--net"] if net else [])]
        prefix = [unshare, *namespaces, "--fork", "--mount-proc", "--kill-child"]
    return [
        *prefix, sys.executable, *INIT_PYTHON_FLAGS, "-m", "snapkernel_engine.restore_init",
        "--criu", binary, "--images", str(images_dir), "--work", str(work_dir),
    ]  # fmt: skip


def _start_launcher(command: list[str], passed: list[int], work_dir: Path) -> subprocess.Popen[bytes]:
    """Start the restore helper in a session of its own, its output into the work folder's log."""
    with open(work_dir / INIT_LOG, "wb") as init_log:
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=init_log,
            stderr=init_log,
            pass_fds=passed,
            start_new_session=True,
            env=package_environment(),
        )


def _await_restore(
    status_read: int,
    launcher: subprocess.Popen[bytes],
    timeout: float,
    work_dir: Path,
    images_dir: Path,
    oom_kills_before: int | None,
) -> tuple[threading.Event, dict[str, Any]]:
    """Wait for the helper's report; return the event set once the memory is all in place, and the report.
    Raise RestoreTimeout, or RestoreError saying why CRIU could not restore (the OOM killer, where it struck)."""
    try:
        status = _read_status(status_read, launcher, timeout, work_dir / RESTORE_LOG)
    except BaseException as error:
        os.close(status_read)
        launcher.kill()
        launcher.wait()
        if isinstance(error, TimeoutError):
            raise RestoreTimeout(f"restore did not finish within {timeout:.0f} s") from None
        raise
    pages_loaded = threading.Event()
    if status.get("lazy"):
        threading.Thread(target=_watch_pages, args=(status_read, pages_loaded), daemon=True).start()
    else:
        os.close(status_read)
        pages_loaded.set()
    if not status.get("ok"):
        launcher.wait()
        reason = status.get("error") or _tail(work_dir / INIT_LOG) or "restore helper exited early"
        oom_kills = process.memory_oom_kills()
        if oom_kills_before is not None and oom_kills is not None and oom_kills > oom_kills_before:
            reason = f"{OUT_OF_MEMORY_MARK}: the memory cgroup's OOM killer ended the restore; {reason}"
        raise RestoreError(f"CRIU could not restore {images_dir}: {reason}", str(status.get("log", "")))
    return pages_loaded, status


def _restored_tree(
    launcher: subprocess.Popen[bytes],
    ns_pid: int,
    pages_loaded: threading.Event,
    cuda_pids: list[int],
    driver: CudaDriver | None,
) -> RestoredTree:
    """The restored tree below the launcher's namespace init, its GPU state (if any) still in host memory; killed
    on failure."""
    init_pids = process.children(launcher.pid)
    if len(init_pids) != 1:
        launcher.kill()
        launcher.wait()
        raise RestoreError(f"cannot find the namespace init below {launcher.pid}")
    try:
        host_pid = _host_pid_of(init_pids[0], ns_pid)
        return RestoredTree(launcher, init_pids[0], host_pid, ns_pid, pages_loaded, cuda_pids, driver)
    except BaseException:
        os.kill(init_pids[0], signal.SIGKILL)
        launcher.wait()
        raise


def package_environment() -> dict[str, str]:
    """This process's environment, with the engine importable by a child Python."""
    environment = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [package_root, *pycriu_search_path(), environment.get("PYTHONPATH")]
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return environment


def _put_gpu_state_back(tree: RestoredTree, cuda_pids: list[int], driver: CudaDriver) -> None:
    """Restore and unlock the CUDA state of the restored processes (found by their PIDs in the image)."""
    by_image_pid = {}
    for member in process.descendants(tree.init_pid):
        try:
            by_image_pid[process.innermost_pid(member)] = member
        except OSError:
            continue
    missing = [pid for pid in cuda_pids if pid not in by_image_pid]
    if missing:
        raise RestoreError(f"restored CUDA process {missing[0]} is not in the restored tree")
    try:
        resume_restored(driver, [by_image_pid[pid] for pid in cuda_pids])
    except CudaError as error:
        raise RestoreError(f"could not put the GPU state back on the GPU: {error}") from error


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
