"""Move a process's CUDA state to host memory and back with the driver's checkpoint API.

CRIU cannot dump GPU memory. The driver (r570+) can lock a CUDA process, copy its device memory
into the process's own host memory and release the GPU (``cuCheckpointProcessCheckpoint``); CRIU
then dumps an ordinary process. After a restore, ``cuCheckpointProcessRestore`` puts the memory
back on the GPU and ``cuCheckpointProcessUnlock`` lets the process run CUDA work again.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Protocol

from .errors import SnapshotError

DEFAULT_LOCK_TIMEOUT_MS = 10_000
NVIDIA_DEVICE_PREFIX = "/dev/nvidia"


class CudaProcessState(enum.IntEnum):
    """CUprocessState."""

    RUNNING = 0
    LOCKED = 1
    CHECKPOINTED = 2
    FAILED = 3


class CudaError(SnapshotError):
    """A CUDA driver call failed; `name` is the driver's error name (e.g. CUDA_ERROR_TIMEOUT)."""

    def __init__(self, call: str, pid: int, name: str, description: str = "") -> None:
        super().__init__(f"{call}(pid {pid}) failed: {name}{f' ({description})' if description else ''}")
        self.call, self.pid, self.name = call, pid, name


class CudaDriver(Protocol):
    """The driver calls the engine makes; the real one is LibcudaDriver."""

    def state(self, pid: int) -> CudaProcessState | None:
        """The process's CUDA state, or None when it holds no CUDA state."""

    def lock(self, pid: int, timeout_ms: int) -> None: ...

    def checkpoint(self, pid: int) -> None: ...

    def restore(self, pid: int) -> None: ...

    def unlock(self, pid: int) -> None: ...


class _LockArgs(ctypes.Structure):
    _fields_ = [("timeoutMs", ctypes.c_uint), ("reserved0", ctypes.c_uint), ("reserved1", ctypes.c_uint64 * 7)]


class LibcudaDriver:
    """CudaDriver through ctypes on libcuda.so.1."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._lib = library
        result = library.cuInit(0)
        if result != 0:
            raise CudaError("cuInit", os.getpid(), self._name(result), self._description(result))

    def _name(self, result: int) -> str:
        text = ctypes.c_char_p()
        self._lib.cuGetErrorName(result, ctypes.byref(text))
        return text.value.decode() if text.value else f"CUresult {result}"

    def _description(self, result: int) -> str:
        text = ctypes.c_char_p()
        self._lib.cuGetErrorString(result, ctypes.byref(text))
        return text.value.decode() if text.value else ""

    def _call(self, name: str, pid: int, *args: object) -> None:
        result = getattr(self._lib, name)(ctypes.c_int(pid), *args)
        if result != 0:
            raise CudaError(name, pid, self._name(result), self._description(result))

    def state(self, pid: int) -> CudaProcessState | None:
        value = ctypes.c_int()
        result = self._lib.cuCheckpointProcessGetState(ctypes.c_int(pid), ctypes.byref(value))
        return CudaProcessState(value.value) if result == 0 else None

    def lock(self, pid: int, timeout_ms: int) -> None:
        args = _LockArgs(timeoutMs=timeout_ms)
        self._call("cuCheckpointProcessLock", pid, ctypes.byref(args))

    def checkpoint(self, pid: int) -> None:
        self._call("cuCheckpointProcessCheckpoint", pid, None)

    def restore(self, pid: int) -> None:
        self._call("cuCheckpointProcessRestore", pid, None)

    def unlock(self, pid: int) -> None:
        self._call("cuCheckpointProcessUnlock", pid, None)


@functools.lru_cache(maxsize=1)
def system_driver() -> CudaDriver | None:
    """The machine's CUDA driver with the checkpoint API, or None (no GPU, old driver)."""
    try:
        library = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if not hasattr(library, "cuCheckpointProcessCheckpoint"):
        return None
    try:
        return LibcudaDriver(library)
    except CudaError:
        return None


def uses_nvidia_devices(pid: int) -> bool:
    """Tell whether a process has an NVIDIA device file open (a cheap pre-check for CUDA state)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(NVIDIA_DEVICE_PREFIX):
                return True
        except OSError:
            continue
    return False


def cuda_processes(driver: CudaDriver, pids: Iterable[int]) -> list[int]:
    """The processes among `pids` that hold CUDA state."""
    return [pid for pid in pids if driver.state(pid) is not None]


def _settle(driver: CudaDriver, pid: int) -> None:
    """Bring a process back to RUNNING from wherever a failed checkpoint left it."""
    state = driver.state(pid)
    if state == CudaProcessState.CHECKPOINTED:
        driver.restore(pid)
        state = CudaProcessState.LOCKED
    if state == CudaProcessState.LOCKED:
        driver.unlock(pid)


@contextmanager
def gpu_state_in_host_memory(
    driver: CudaDriver | None,
    pids: list[int],
    *,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    resume: bool = True,
) -> Iterator[None]:
    """Lock and checkpoint the CUDA state of `pids` for the block; put it back afterwards.

    With no `pids` the block just runs (and `driver` may be None).

    On any failure every process is brought back to running before the error propagates, so no
    process stays locked or checkpointed. With `resume` False (the block ended the processes, as
    a dump that does not leave them running does), nothing is put back after a successful block.
    """
    if not pids:
        yield
        return
    assert driver is not None, "CUDA processes without a driver"
    try:
        for pid in pids:
            driver.lock(pid, lock_timeout_ms)
        for pid in pids:
            driver.checkpoint(pid)
    except BaseException:
        for pid in pids:
            _settle(driver, pid)
        raise
    try:
        yield
    except BaseException:
        for pid in pids:
            _settle(driver, pid)
        raise
    if resume:
        for pid in pids:
            _settle(driver, pid)


def resume_restored(driver: CudaDriver, pids: list[int]) -> None:
    """Put the GPU state of restored processes back on the GPU and let them run."""
    for pid in pids:
        driver.restore(pid)
        driver.unlock(pid)
