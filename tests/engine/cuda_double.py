"""A stand-in for the CUDA driver's checkpoint calls (and nothing else), for machines without a GPU."""

from __future__ import annotations

from snapkernel_engine.cuda import CudaError, CudaProcessState

RUNNING, LOCKED, CHECKPOINTED = CudaProcessState.RUNNING, CudaProcessState.LOCKED, CudaProcessState.CHECKPOINTED


class CudaDriverDouble:
    """Tracks each CUDA process's state as the driver would, and fails a call when told to."""

    def __init__(self) -> None:
        self.states: dict[int, CudaProcessState] = {}
        self.calls: list[tuple[str, int]] = []
        self.failures: dict[str, str] = {}

    def holds_cuda(self, pid: int) -> None:
        """Make `pid` a process with CUDA state (a real one would have created a context)."""
        self.states[pid] = RUNNING

    def _transition(self, call: str, pid: int, expected: CudaProcessState, new: CudaProcessState) -> None:
        self.calls.append((call, pid))
        if call in self.failures:
            raise CudaError(call, pid, self.failures.pop(call))
        if self.states.get(pid) != expected:
            raise CudaError(call, pid, "CUDA_ERROR_ILLEGAL_STATE")
        self.states[pid] = new

    def state(self, pid: int) -> CudaProcessState | None:
        return self.states.get(pid)

    def lock(self, pid: int, timeout_ms: int) -> None:
        self._transition("lock", pid, RUNNING, LOCKED)

    def checkpoint(self, pid: int) -> None:
        self._transition("checkpoint", pid, LOCKED, CHECKPOINTED)

    def restore(self, pid: int) -> None:
        # A restored process arrives in the state its image was taken in.
        self.states.setdefault(pid, CHECKPOINTED)
        self._transition("restore", pid, CHECKPOINTED, LOCKED)

    def unlock(self, pid: int) -> None:
        self._transition("unlock", pid, LOCKED, RUNNING)
