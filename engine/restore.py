"""Restore a CRIU image in fresh PID and mount namespaces and control the restored tree."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from . import process
from .criu import find_criu, require_supported
from .errors import CriuUnavailable, RestoreError

INIT_LOG = "init.log"
DEFAULT_TIMEOUT_S = 120.0


class RestoredTree:
    """Handle to a restored process tree living in its own PID namespace."""

    def __init__(self, launcher: subprocess.Popen[bytes], init_pid: int, pid: int, ns_pid: int) -> None:
        self._launcher = launcher
        self.init_pid = init_pid
        self.pid = pid
        self.ns_pid = ns_pid
        self._killed = False

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


def _read_status(fd: int, launcher: subprocess.Popen[bytes], timeout: float) -> dict[str, object]:
    """Read the init's one-line JSON report, or fail when it dies or times out."""
    deadline = time.monotonic() + timeout
    buffer = b""
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buffer += chunk
    if not buffer:
        launcher.wait()
        return {}
    return json.loads(buffer)


def _host_pid_of(init_pid: int, ns_pid: int) -> int:
    """Find the host PID of the init's child that is `ns_pid` inside the namespace."""
    for child in process.children(init_pid):
        try:
            if process.innermost_pid(child) == ns_pid:
                return child
        except OSError:
            continue
    raise RestoreError(f"restored process {ns_pid} is not a child of the namespace init {init_pid}")


def restore(
    images_dir: Path,
    work_dir: Path,
    *,
    inherit_fds: Mapping[str, int] | None = None,
    criu_binary: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> RestoredTree:
    """Restore the image in `images_dir` into new PID and mount namespaces.

    `inherit_fds` maps CRIU keys of the dumped tree's pipes (``pipe:[INODE]``) to fds of this
    process that replace them in the restored tree. `images_dir` is only read; logs go to
    `work_dir`, which must be private to this restore.
    """
    binary = find_criu(criu_binary)
    require_supported(binary)
    unshare = shutil.which("unshare")
    if unshare is None:
        raise CriuUnavailable("`unshare` (util-linux) is required to restore into new namespaces")
    inherit_fds = dict(inherit_fds or {})
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    status_read, status_write = os.pipe()
    command = [
        unshare, "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
        sys.executable, "-m", "engine.restore_init",
        "--criu", binary, "--images", str(images_dir), "--work", str(work_dir),
        "--status-fd", str(status_write),
    ]  # fmt: skip
    command += [f"--inherit={key}={fd}" for key, fd in inherit_fds.items()]
    environment = dict(os.environ)
    package_root = str(Path(__file__).resolve().parent.parent)
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
    try:
        with open(work_dir / INIT_LOG, "wb") as init_log:
            launcher = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=init_log,
                stderr=init_log,
                pass_fds=[status_write, *inherit_fds.values()],
                start_new_session=True,
                env=environment,
            )
    finally:
        os.close(status_write)
    try:
        try:
            status = _read_status(status_read, launcher, timeout)
        except TimeoutError:
            launcher.kill()
            launcher.wait()
            raise RestoreError(f"restore did not finish within {timeout:.0f} s") from None
    finally:
        os.close(status_read)
    if not status.get("ok"):
        launcher.wait()
        reason = status.get("error") or _tail(work_dir / INIT_LOG) or "restore helper exited early"
        raise RestoreError(f"CRIU could not restore {images_dir}: {reason}", str(status.get("log", "")))
    ns_pid = int(status["pid"])  # type: ignore[arg-type]
    init_pids = process.children(launcher.pid)
    if len(init_pids) != 1:
        launcher.kill()
        launcher.wait()
        raise RestoreError(f"cannot find the namespace init below {launcher.pid}")
    try:
        host_pid = _host_pid_of(init_pids[0], ns_pid)
    except RestoreError:
        os.kill(init_pids[0], signal.SIGKILL)
        launcher.wait()
        raise
    return RestoredTree(launcher, init_pids[0], host_pid, ns_pid)


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
