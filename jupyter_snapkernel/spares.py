"""Kernels restored ahead of time: each waits on its control pipe until a launch hands it a connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from dataclasses import dataclass

from snapkernel_engine import Manifest, RestoredTree, SnapshotStore
from snapkernel_engine.control_pipe import PipeChannel

from .background_builds import in_daemon_thread


@dataclass
class KernelAwaitingConnection:
    """A restored kernel that has no socket yet, blocked until it is sent a resume request."""

    tree: RestoredTree
    channel: PipeChannel
    snapshot: str

    def close_pipes(self) -> None:
        for fd in (self.channel.read_fd, self.channel.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> None:
        self.tree.kill()
        self.close_pipes()


def _forward(read_fd: int, target_fd: int) -> None:
    """Copy a pipe into `target_fd` until every writer has closed it."""
    try:
        while data := os.read(read_fd, 65536):
            with contextlib.suppress(OSError):
                os.write(target_fd, data)
    finally:
        os.close(read_fd)


def forwarded_output(target_fd: int) -> int:
    """A pipe of this user's own whose data goes to `target_fd`; return its write end.

    CRIU reopens a restored pipe through /proc/self/fd, which works only for pipes the restoring
    user owns: a server's own stdout may belong to whoever started it (a hub running as root).
    """
    read_fd, write_fd = os.pipe()
    threading.Thread(target=_forward, args=(read_fd, target_fd), daemon=True, name="snapkernel-output").start()
    return write_fd


def restore_awaiting_connection(
    store: SnapshotStore, manifest: Manifest, *, lazy: bool, timeout: float
) -> KernelAwaitingConnection:
    """Restore a snapshot's kernel with fresh pipes; it waits for its resume request."""
    control_read, control_write = os.pipe()
    report_read, report_write = os.pipe()
    handed = {
        "stdin": os.open(os.devnull, os.O_RDONLY),
        "stdout": forwarded_output(1),  # restored kernels write where a cold kernel of this server would
        "stderr": forwarded_output(2),
        "control": control_read,
        "report": report_write,
    }
    try:
        tree = store.restore_snapshot(manifest.id, key=manifest.key, pipes=handed, timeout=timeout, lazy=lazy)
    except BaseException:
        os.close(control_write)
        os.close(report_read)
        raise
    finally:
        for fd in handed.values():
            os.close(fd)
    return KernelAwaitingConnection(tree, PipeChannel(report_read, control_write), manifest.id)


REFILL_DELAY_S = 1.0


class SparePool:
    """At most one spare kernel per CPU snapshot, restored in the background after each launch."""

    def __init__(self) -> None:
        self._spares: dict[str, KernelAwaitingConnection] = {}
        self._filling: dict[str, asyncio.Task[KernelAwaitingConnection | None]] = {}
        self._generation = 0  # discard_all() starts a new one: spares of an older one are killed on arrival

    @property
    def filling(self) -> bool:
        """Whether a spare is being restored now."""
        return bool(self._filling)

    def take(self, snapshot_id: str) -> KernelAwaitingConnection | None:
        """Return the live spare for a snapshot, if one is ready."""
        spare = self._spares.pop(snapshot_id, None)
        if spare is not None and spare.tree.poll() is not None:
            spare.close_pipes()
            return None
        return spare

    def refill(self, store: SnapshotStore, manifest: Manifest, *, lazy: bool, timeout: float) -> None:
        """Restore a spare for `manifest` in the background unless one exists or is on its way."""
        if manifest.id in self._spares or manifest.id in self._filling or manifest.cuda_pids:
            return  # a spare of a GPU snapshot would hold a second copy of its GPU memory
        for snapshot_id in [known for known in self._spares if known != manifest.id]:
            try:
                store.get(snapshot_id)
            except Exception:  # deleted or unreadable: its spare is of no more use
                self._spares.pop(snapshot_id).discard()

        generation = self._generation

        async def restore_after_the_start_settles() -> KernelAwaitingConnection | None:
            # The kernel just handed out runs its first cells now: a restore beside it would slow them.
            await asyncio.sleep(REFILL_DELAY_S)
            if generation != self._generation:
                return None  # discarded while it waited
            return await in_daemon_thread(restore_awaiting_connection, store, manifest, lazy=lazy, timeout=timeout)

        task = asyncio.ensure_future(restore_after_the_start_settles())
        self._filling[manifest.id] = task

        def settle(done: asyncio.Task[KernelAwaitingConnection | None]) -> None:
            if self._filling.get(manifest.id) is done:
                del self._filling[manifest.id]
            spare = None if done.cancelled() or done.exception() is not None else done.result()
            if spare is None:
                return
            if generation != self._generation:
                spare.discard()  # restored while discard_all() ran: nobody will take it
            else:
                self._spares[manifest.id] = spare

        task.add_done_callback(settle)

    def discard_all(self) -> None:
        """Kill every spare; those being restored now are killed as soon as their restore ends."""
        self._generation += 1
        for spare in self._spares.values():
            spare.discard()
        self._spares.clear()

    async def close(self, timeout: float) -> None:
        """Kill every spare and wait (at most `timeout` s) until those being restored are killed too."""
        self.discard_all()
        loop = asyncio.get_running_loop()
        filling = [task for task in self._filling.values() if task.get_loop() is loop]
        # A task of an event loop that has ended never settles: forget it, or its snapshot gets no spare again.
        self._filling = {key: task for key, task in self._filling.items() if task.get_loop() is loop}
        if filling:
            await asyncio.wait(filling, timeout=timeout)


spare_pool = SparePool()
