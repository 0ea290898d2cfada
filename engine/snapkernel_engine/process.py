"""Read facts about live processes from /proc."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
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
        return _state(Path(f"/proc/{pid}/stat")) != "Z"
    except OSError:
        return False


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


def open_fds(pid: int) -> dict[str, str]:
    """Return a process's open file descriptors and what each points to (empty: the process is gone)."""
    targets: dict[str, str] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return targets
    for fd in fds:
        with contextlib.suppress(OSError):
            targets[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
    return targets


def files_open_for_writing(pid: int) -> list[str]:
    """Return the paths of existing regular files that a process holds open for writing."""
    found: list[str] = []
    for fd, target in open_fds(pid).items():
        try:
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


def memory_oom_kills() -> int | None:
    """How many processes the OOM killer of this process's memory cgroup has killed (None: unknown here)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2, alone or beside v1 hierarchies (a hybrid layout)
            candidates = [f"/sys/fs/cgroup{path}/memory.events", f"/sys/fs/cgroup/unified{path}/memory.events"]
        elif "memory" in controllers.split(","):
            candidates = [f"/sys/fs/cgroup/memory{path}/memory.oom_control"]
        else:
            continue
        for candidate in candidates:
            try:
                fields = dict(
                    entry.split(None, 1) for entry in Path(candidate).read_text().splitlines() if " " in entry
                )
            except OSError:
                continue
            if "oom_kill" in fields:
                return int(fields["oom_kill"])
    return None


# Socket states in /proc/net/{tcp,udp}: 07 is TCP_CLOSE (unconnected), 0A is TCP_LISTEN.
UNCONNECTED = "07"
LISTENING = "0A"
# __SO_ACCEPTCON in /proc/net/unix's flags: the socket listens; state 03 is SS_CONNECTED.
UNIX_LISTENING_FLAG = 0x10000
UNIX_CONNECTED = "03"
# How Python's multiprocessing starts the processes of its 'spawn' and 'forkserver' start methods.
MULTIPROCESSING_MAINS = {
    "from multiprocessing.forkserver import main": "forkserver",
    "from multiprocessing.spawn import spawn_main": "spawn",
}


@dataclass(frozen=True)
class AddressedSocket:
    """A socket of a process that holds an address (bound or listening) or a connection."""

    protocol: str  # "TCP", "UDP" or "unix"
    local: str
    remote: str = ""
    listening: bool = False

    @property
    def abstract(self) -> bool:
        """Whether it is a unix socket in the abstract namespace (private to a network namespace)."""
        return self.protocol == "unix" and self.local.startswith("@")

    def describe(self) -> str:
        """Say what the socket does, with its addresses."""
        if self.remote:
            return f"has a {self.protocol} connection to {self.remote} (from {self.local})"
        what = "listens on" if self.listening else "is bound to"
        return f"{what} {self.protocol} {'socket ' if self.protocol == 'unix' else ''}{self.local}"


def socket_inodes(pid: int) -> set[int]:
    """Return the inodes of the sockets a process holds open."""
    return {int(target[len("socket:[") : -1]) for target in open_fds(pid).values() if target.startswith("socket:[")}


def _inet_address(hex_address: str) -> tuple[str, int]:
    """Decode an address of /proc/net/tcp (``0100007F:1F90``) into host and port."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if sys.byteorder == "little":  # the kernel prints each 32-bit word in host byte order
        raw = b"".join(raw[start : start + 4][::-1] for start in range(0, len(raw), 4))
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw), int(port, 16)
    return f"[{socket.inet_ntop(socket.AF_INET6, raw)}]", int(port, 16)


def _inet_sockets(pid: int, inodes: set[int]) -> list[AddressedSocket]:
    """The TCP and UDP sockets among `inodes` that hold a port or a connection, from the process's network view."""
    found: list[AddressedSocket] = []
    for table, protocol in (("tcp", "TCP"), ("tcp6", "TCP"), ("udp", "UDP"), ("udp6", "UDP")):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or int(fields[9]) not in inodes:
                continue
            (local_host, local_port), (remote_host, remote_port) = map(_inet_address, fields[1:3])
            local = f"{local_host}:{local_port}"
            if fields[3] == LISTENING and protocol == "TCP":
                found.append(AddressedSocket(protocol, local, listening=True))
            elif remote_port or (protocol == "TCP" and fields[3] != UNCONNECTED):
                found.append(AddressedSocket(protocol, local, f"{remote_host}:{remote_port}"))
            elif local_port:
                found.append(AddressedSocket(protocol, local))
    return found


def _unix_sockets(pid: int, inodes: set[int]) -> list[AddressedSocket]:
    """The unix sockets among `inodes` that listen or are bound to a name (a path or an abstract ``@name``)."""
    found: list[AddressedSocket] = []
    try:
        lines = Path(f"/proc/{pid}/net/unix").read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split(None, 7)
        if len(fields) < 8 or int(fields[6]) not in inodes:
            continue
        listening = bool(int(fields[3], 16) & UNIX_LISTENING_FLAG)
        # An accepted connection carries its listener's name: only unconnected named sockets hold the name.
        if listening or fields[5] != UNIX_CONNECTED:
            found.append(AddressedSocket("unix", fields[7], listening=listening))
    return found


def addressed_sockets(pid: int) -> list[AddressedSocket]:
    """Return the sockets of a process that listen, are bound to an address, or are connected over TCP/UDP."""
    inodes = socket_inodes(pid)
    if not inodes:
        return []
    return [*_inet_sockets(pid, inodes), *_unix_sockets(pid, inodes)]


def multiprocessing_start_method(pid: int) -> str | None:
    """Return 'spawn' or 'forkserver' when a process was started by that multiprocessing start method."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return None
    for main, method in MULTIPROCESSING_MAINS.items():
        if main in command:
            return method
    return None


def linked_semaphores_mapped(pid: int) -> list[str]:
    """Return the named POSIX semaphores (``/dev/shm/sem.*``) a process maps under a name it unlinked while
    another name still links them: glibc's sem_open leaves that behind until sem_unlink."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    deleted_inodes = {
        int(fields[4])
        for fields in (line.split(None, 5) for line in maps)
        if len(fields) == 6 and fields[5].startswith("/dev/shm/sem.") and fields[5].endswith(" (deleted)")
    }
    if not deleted_inodes:
        return []
    found: list[str] = []
    with os.scandir("/dev/shm") as entries:
        for entry in entries:
            with contextlib.suppress(OSError):
                if entry.name.startswith("sem.") and entry.inode() in deleted_inodes:
                    found.append(entry.path)
    return sorted(found)
