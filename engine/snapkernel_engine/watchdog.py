"""Kill a process group when its owner dies, whatever killed the owner.

A process that will be checkpointed cannot carry PR_SET_PDEATHSIG (it is restored with it, and the
restored process dies when CRIU exits), so a separate watcher does that job: it holds pidfds of the
owner and of the target, and SIGKILLs the target's process group if the owner goes first. Run by
``watch_for_owner``; not an API.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path


def watch_for_owner(target_pid: int) -> subprocess.Popen[bytes]:
    """Start a watcher that kills `target_pid`'s process group if this process dies before it."""
    from .restore import package_environment

    owner_fd = os.pidfd_open(os.getpid())
    target_fd = os.pidfd_open(target_pid)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "snapkernel_engine.watchdog", f"--owner-fd={owner_fd}", f"--target-fd={target_fd}",
             f"--target-group={target_pid}"],
            stdin=subprocess.DEVNULL,
            pass_fds=(owner_fd, target_fd),
            start_new_session=True,  # a Ctrl-C meant for the owner is handled by the owner, not here
            env=package_environment(),
        )  # fmt: skip
    finally:
        os.close(owner_fd)
        os.close(target_fd)


def main(argv: list[str] | None = None) -> int:
    """Wait until the owner or the target exits; in the first case kill the target's group."""
    parser = argparse.ArgumentParser(prog="python -m snapkernel_engine.watchdog")
    parser.add_argument("--owner-fd", type=int, required=True)
    parser.add_argument("--target-fd", type=int, required=True)
    parser.add_argument("--target-group", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ready, _, _ = select.select([args.owner_fd, args.target_fd], [], [])
    if args.target_fd in ready:
        return 0
    dumping = _criu_tracing(args.target_group)  # read first: a dead process has no tracer
    with suppress(ProcessLookupError):
        signal.pidfd_send_signal(args.target_fd, signal.SIGKILL)
        os.killpg(args.target_group, signal.SIGKILL)  # its children too (a pool of workers, say)
    if dumping is not None:
        # A CRIU whose tracee dies in the middle of a dump can wait for it forever.
        with suppress(ProcessLookupError, PermissionError):
            os.kill(dumping, signal.SIGKILL)
    return 0


def _criu_tracing(pid: int) -> int | None:
    """The CRIU process that has `pid` under ptrace (dumping it), if any."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        tracer = int(next(line.split()[1] for line in status.splitlines() if line.startswith("TracerPid:")))
        if tracer and Path(f"/proc/{tracer}/comm").read_text().strip() == "criu":
            return tracer
    except (OSError, StopIteration, ValueError):
        pass
    return None


if __name__ == "__main__":
    raise SystemExit(main())
