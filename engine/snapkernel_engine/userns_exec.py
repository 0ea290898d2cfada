"""Run CRIU inside the user namespace of a process, with the capabilities CRIU needs there.

A build kernel in user-namespace mode lives in a user namespace its owner created without any
grant; its owner may join it (setns) and then holds every capability inside it. CRIU keeps only
``checkpoint_restore`` and ``setpcap`` (ambient, so they survive exec). pycriu execs one binary
with ``swrk FD``; a small generated script calls ``enter_and_exec`` with the target and the real
binary, so the RPC protocol stays the same in every mode. Not an API.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from .privileges import CAP_CHECKPOINT_RESTORE, CAP_SETPCAP

CLONE_NEWUSER = 0x10000000
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _CapData(ctypes.Structure):
    _fields_ = (("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32))


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{what}: {os.strerror(error)}")


def _capabilities() -> tuple[_CapHeader, ctypes.Array[_CapData]]:
    """This process's capability sets, as capget gives them: capabilities 0-31 in the first item, 32-63 next."""
    header = _CapHeader(LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    _check(_libc().capget(ctypes.byref(header), data), "capget")
    return header, data


def raise_ambient(capabilities: tuple[int, ...]) -> None:
    """Make permitted capabilities inheritable and ambient, so that they survive exec."""
    header, data = _capabilities()
    for capability in capabilities:
        data[capability // 32].inheritable |= 1 << (capability % 32)
    libc = _libc()
    _check(libc.capset(ctypes.byref(header), data), "capset")
    for capability in capabilities:
        _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, capability, 0, 0), f"raise ambient {capability}")


def drop_capability(capability: int) -> None:
    """Remove a capability from this process's effective, permitted and inheritable sets (and so from its ambient
    set): neither this process nor what it execs holds it any more."""
    header, data = _capabilities()
    mask = ~(1 << (capability % 32)) & 0xFFFFFFFF
    sets = data[capability // 32]
    sets.effective &= mask
    sets.permitted &= mask
    sets.inheritable &= mask
    _check(_libc().capset(ctypes.byref(header), data), f"drop capability {capability}")


def enter_and_exec(target_pid: int, binary: str) -> None:
    """Join the user namespace of `target_pid`, keep CRIU's capabilities, and exec `binary` with our args."""
    fd = os.open(f"/proc/{target_pid}/ns/user", os.O_RDONLY)
    _check(_libc().setns(fd, CLONE_NEWUSER), f"setns into the user namespace of {target_pid}")
    os.close(fd)
    raise_ambient((CAP_CHECKPOINT_RESTORE, CAP_SETPCAP))
    os.execv(binary, [binary, *sys.argv[1:]])


def write_launcher(path: Path, target_pid: int, binary: str) -> Path:
    """Write an executable that runs `binary` inside the user namespace of `target_pid`."""
    package_root = str(Path(__file__).resolve().parent.parent)
    path.write_text(
        f"#!{sys.executable} -I\n"
        f"import sys\nsys.path.insert(0, {package_root!r})\n"
        f"from snapkernel_engine.userns_exec import enter_and_exec\nenter_and_exec({target_pid}, {binary!r})\n"
    )
    os.chmod(path, 0o700)
    return path
