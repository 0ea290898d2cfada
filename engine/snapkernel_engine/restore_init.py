"""PID 1 of a restore namespace: restores an image through CRIU, then reaps until the root exits.

Run by snapkernel_engine.restore under ``unshare --pid --mount --fork --mount-proc``; not an API. With
``--lazy`` it first starts CRIU's lazy-pages daemon, so the tree resumes before its memory is
copied in; the daemon fills the rest in the background and answers page faults first.
"""

from __future__ import annotations

import argparse
import os
import signal

from .control_pipe import write_message
from .criu import log_excerpt, restore_seconds, rpc_client

TYPE_CHECKING = False  # typing is not imported for annotations alone: every restore starts this module
if TYPE_CHECKING:
    import subprocess

RESTORE_LOG = "restore.log"
LAZY_PAGES_LOG = "lazy-pages.log"
LAZY_PAGES_SOCKET = "lazy-pages.socket"
DAEMON_START_TIMEOUT_S = 10.0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m snapkernel_engine.restore_init")
    parser.add_argument("--criu", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--inherit", action="append", default=[], metavar="KEY=FD")
    parser.add_argument("--lazy", action="store_true", help="restore memory lazily (userfaultfd)")
    parser.add_argument("--watch-fd", type=int, default=None, help="pidfd of the owner: exit when it exits")
    parser.add_argument("--unprivileged", action="store_true", help="restore with CRIU's --unprivileged")
    parser.add_argument("--loopback-up", action="store_true", help="bring up lo (in a new network namespace)")
    parser.add_argument("--leave-stopped", action="store_true", help="leave every restored task stopped (SIGSTOP)")
    return parser.parse_args(argv)


def _report(status_fd: int, **fields: object) -> None:
    """Tell the launcher how the restore went (one control-pipe message)."""
    write_message(status_fd, fields)


def _start_lazy_pages(args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """Start the lazy-pages daemon and wait until it listens."""
    import subprocess
    import time

    daemon = subprocess.Popen(
        [args.criu, "lazy-pages", "-D", args.images, "-W", args.work, "-o", LAZY_PAGES_LOG, "-v2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    socket_path = os.path.join(args.work, LAZY_PAGES_SOCKET)
    deadline = time.monotonic() + DAEMON_START_TIMEOUT_S
    while not os.path.exists(socket_path):
        if daemon.poll() is not None or time.monotonic() > deadline:
            daemon.kill()
            excerpt = log_excerpt(os.path.join(args.work, LAZY_PAGES_LOG))
            raise RuntimeError("the lazy-pages daemon did not start: " + excerpt)
        time.sleep(0.002)
    return daemon


def _bring_up_loopback(unprivileged: bool) -> None:
    """Bring up `lo`: CRIU probes TCP over it, and a new network namespace starts with it down. Unprivileged, the
    net_admin that allowed it (privileges.OWN_NETWORK_CAPS) is then dropped."""
    import fcntl
    import socket
    import struct

    get_flags, set_flags, up = 0x8913, 0x8914, 0x1  # SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            flags = struct.unpack("16sh", fcntl.ioctl(probe, get_flags, struct.pack("16sh", b"lo", 0)))[1]
            fcntl.ioctl(probe, set_flags, struct.pack("16sh", b"lo", flags | up))
    except OSError as error:
        raise RuntimeError(f"could not bring up the loopback of the restore's network namespace: {error}") from error
    if unprivileged:
        from .privileges import CAP_NET_ADMIN
        from .userns_exec import drop_capability

        # CRIU reads this process's files in /proc, which the kernel allows only to a caller that holds every
        # capability this process holds.
        drop_capability(CAP_NET_ADMIN)


def _images_for_this_user(images: str, work: str) -> str:
    """A private view of the image whose credentials are this user's (only they are mapped here)."""
    from pathlib import Path

    from .credentials import rewrite_for_user

    private = Path(work) / "images"
    private.mkdir(mode=0o700)
    # Groups left out: the tree keeps this namespace's own, which are the user's.
    rewrite_for_user(Path(images), private, os.getuid(), os.getgid())
    return str(private)


def _exit_with_owner(pidfd: int) -> None:
    """Exit (ending the namespace) when the owner process exits."""
    import select
    import threading

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _reap_until(root: int, daemon_pid: int | None, status_fd: int) -> int:
    """Reap every orphan of the namespace; return the root's exit code when it ends."""
    while True:
        try:
            pid, wait_status = os.wait()
        except ChildProcessError:
            return 0
        if pid == daemon_pid:
            _report(status_fd, pages_loaded=True, exit_code=os.waitstatus_to_exitcode(wait_status))
            os.close(status_fd)
        if pid == root:
            code = os.waitstatus_to_exitcode(wait_status)
            return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    """Restore the image and stay as the namespace's init while the restored root lives."""
    args = _parse_args(argv)
    # A namespace init only receives signals it handles; Python's SIGINT handler would make an
    # interrupt meant for the tree raise here instead.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    status_fd = args.status_fd
    if args.watch_fd is not None:
        _exit_with_owner(args.watch_fd)
    inherited = {}
    for item in args.inherit:
        key, _, fd = item.rpartition("=")
        inherited[key] = int(fd)
    work_fd = os.open(args.work, os.O_DIRECTORY)
    daemon = None
    try:
        if args.loopback_up:
            _bring_up_loopback(args.unprivileged)
        client = rpc_client(args.criu, unprivileged=args.unprivileged)
        client.opts.images_dir = args.images
        client.opts.log_file = RESTORE_LOG
        client.opts.rst_sibling = True
        client.opts.work_dir_fd = work_fd
        client.opts.leave_stopped = args.leave_stopped
        for key, fd in inherited.items():
            entry = client.opts.inherit_fd.add()
            entry.key = key
            entry.fd = fd
        if args.unprivileged:
            client.opts.images_dir = _images_for_this_user(args.images, args.work)
        if args.lazy:
            daemon = _start_lazy_pages(args)
            client.opts.lazy_pages = True
        pid = client.restore().pid
    except Exception as error:  # any failure is reported to the caller, who decides what to do
        if daemon is not None:
            daemon.kill()
        _report(status_fd, ok=False, error=str(error), log=log_excerpt(os.path.join(args.work, RESTORE_LOG)))
        return 1
    finally:
        os.close(work_fd)
    for fd in inherited.values():
        # The restored tree holds its own copies; ours would keep pipes from reaching EOF.
        os.close(fd)
    _report(status_fd, ok=True, pid=pid, lazy=daemon is not None, criu_restore_s=restore_seconds(args.work))
    if daemon is None:
        os.close(status_fd)
    return _reap_until(pid, daemon.pid if daemon else None, status_fd)


if __name__ == "__main__":
    raise SystemExit(main())
