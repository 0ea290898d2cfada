"""PID 1 of a restore namespace: restores an image through CRIU, then reaps until the root exits.

Run by engine.restore under ``unshare --pid --mount --fork --mount-proc``; not an API.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from .criu import log_excerpt, rpc_client

RESTORE_LOG = "restore.log"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engine.restore_init")
    parser.add_argument("--criu", required=True)
    parser.add_argument("--images", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--status-fd", type=int, required=True)
    parser.add_argument("--inherit", action="append", default=[], metavar="KEY=FD")
    return parser.parse_args(argv)


def _report(fd: int, **fields: object) -> None:
    with os.fdopen(fd, "w") as status:
        status.write(json.dumps(fields) + "\n")


def _reap_until(root: int) -> int:
    """Reap every orphan of the namespace; return the root's exit code when it ends."""
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == root:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def main(argv: list[str] | None = None) -> int:
    """Restore the image and stay as the namespace's init while the restored root lives."""
    args = _parse_args(argv)
    # A namespace init only receives signals it handles; Python's SIGINT handler would make an
    # interrupt meant for the tree raise here instead.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    inherited = {}
    for item in args.inherit:
        key, _, fd = item.rpartition("=")
        inherited[key] = int(fd)
    client = rpc_client(args.criu)
    client.opts.images_dir = args.images
    client.opts.log_file = RESTORE_LOG
    client.opts.rst_sibling = True
    for key, fd in inherited.items():
        entry = client.opts.inherit_fd.add()
        entry.key = key
        entry.fd = fd
    work_fd = os.open(args.work, os.O_DIRECTORY)
    client.opts.work_dir_fd = work_fd
    try:
        response = client.restore()
    except Exception as error:  # any failure is reported to the caller, who decides what to do
        _report(args.status_fd, ok=False, error=str(error), log=log_excerpt(Path(args.work) / RESTORE_LOG))
        return 1
    finally:
        os.close(work_fd)
    for fd in inherited.values():
        # The restored tree holds its own copies; ours would keep pipes from reaching EOF.
        os.close(fd)
    _report(args.status_fd, ok=True, pid=response.pid)
    return _reap_until(response.pid)


if __name__ == "__main__":
    raise SystemExit(main())
