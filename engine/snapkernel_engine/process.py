"""Read facts about live processes from /proc."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def children(pid: int) -> list[int]:
    """Return the direct children of every thread of `pid`."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(child) for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return found


def descendants(pid: int) -> Iterator[int]:
    """Yield every process below `pid` (not `pid` itself), depth first."""
    for child in children(pid):
        yield child
        yield from descendants(child)


def tree(pid: int) -> list[int]:
    """Return `pid` followed by all its descendants."""
    return [pid, *descendants(pid)]


def rss_bytes(pid: int) -> int:
    """Return the resident set size of one process, or 0 if it is gone."""
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return resident_pages * PAGE_SIZE


def tree_rss_bytes(pid: int) -> int:
    """Return the summed resident set size of a process tree."""
    return sum(rss_bytes(member) for member in tree(pid))


def fd_target(pid: int, fd: int) -> str:
    """Return what a process's file descriptor points to, e.g. ``pipe:[1234]``."""
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def innermost_pid(pid: int) -> int:
    """Return the PID that process `pid` has inside its own (innermost) PID namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return pid


def is_alive(pid: int) -> bool:
    """Tell whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_stopped(pid: int) -> bool:
    """Tell whether every thread of a process is stopped (by a signal or a tracer): none of them runs."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
        states = [_state(Path(f"/proc/{pid}/task/{tid}/stat")) for tid in threads]
    except OSError:
        return False
    return bool(states) and all(state in {"T", "t"} for state in states)


def _state(stat_path: Path) -> str:
    """The one-letter scheduler state in a /proc stat file."""
    return stat_path.read_text().rsplit(")", 1)[1].split()[0]


def files_open_for_writing(pid: int) -> list[str]:
    """Return the paths of existing regular files that a process holds open for writing."""
    found: list[str] = []
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = int(Path(f"/proc/{pid}/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError, ValueError):
            continue
        if flags & os.O_ACCMODE == os.O_RDONLY or not target.startswith("/") or target.endswith(" (deleted)"):
            continue
        if target.startswith(("/dev/", "/proc/", "/sys/")):
            continue
        if os.path.isfile(target):
            found.append(target)
    return sorted(set(found))
