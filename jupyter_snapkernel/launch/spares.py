"""Kernels restored ahead of time (spares): each waits, stopped, on its control pipe until a launch claims it.

A spare is restored with every process stopped (CRIU's --leave-stopped): no thread of the setup runs,
writes or answers on a socket until a launch claims it and continues it. Spares are retired when their
snapshot is deleted or replaced, when their notebook's setup changed, when no session of their notebook
has been open for `spare_idle_seconds`, and least recently used first to keep the server's spares
within `spare_memory_bytes`.

A spare of a GPU snapshot keeps its GPU state in host memory (checkpointed by CUDA, as in the image) and holds
no GPU memory: the GPU state goes back on the GPU when a launch claims it. Spares are restored into the network
a launch of their snapshot would get (network.restores_in_own_network), as they get their connection only
when claimed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapkernel_engine import Manifest, RestoredTree, SnapshotError, SnapshotStore
from snapkernel_engine.control_pipe import PipeChannel
from snapkernel_engine.messages import (
    KernelEvent,
    KernelPipes,
    Resumed,
    ResumeFailed,
    ResumeRequest,
    receive_event,
    send,
)
from snapkernel_engine.process import is_stopped, tree, tree_rss_bytes

from ..notebook.setup_section import NotebookError, read_setup_section
from .background_builds import in_daemon_thread


class PortTaken(RuntimeError):
    """A restored kernel could not listen: another process took a port of its connection after it was chosen."""


def resume_error(reply: KernelEvent) -> RuntimeError:
    """The error a kernel's reply other than Resumed stands for."""
    if not isinstance(reply, ResumeFailed):
        return RuntimeError(f"unexpected reply {reply}")
    return PortTaken(reply.error) if reply.errno == errno.EADDRINUSE else RuntimeError(reply.error)


@dataclass
class KernelAwaitingConnection:
    """A restored kernel that has no socket yet, blocked until it is sent a resume request."""

    tree: RestoredTree
    channel: PipeChannel
    snapshot: str

    def close_pipes(self) -> None:
        """Close the launcher's ends of the kernel's control pipe."""
        for fd in (self.channel.read_fd, self.channel.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def discard(self) -> None:
        """Kill the kernel and close its pipes."""
        self.tree.kill()
        self.close_pipes()

    async def put_gpu_state_back(self) -> None:
        """Put GPU state the restore left in host memory back on the GPU (off the event loop); on failure,
        discard the kernel."""
        if not self.tree.gpu_state_pending:
            return
        try:
            await in_daemon_thread(self.tree.put_gpu_state_back)
        except BaseException:
            self.discard()
            raise

    async def resume(self, request: ResumeRequest, timeout: float) -> Resumed:
        """Hand the kernel its launch and wait (at most `timeout` s) until it listens; on failure, discard it.
        Return the kernel's Resumed event."""
        try:
            send(self.channel, request)
            reply = await asyncio.wait_for(in_daemon_thread(receive_event, self.channel), timeout)
            if not isinstance(reply, Resumed):
                raise resume_error(reply)
        except BaseException:
            self.discard()
            raise
        self.close_pipes()
        return reply


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
    store: SnapshotStore,
    manifest: Manifest,
    *,
    lazy: bool,
    timeout: float,
    stopped: bool = False,
    own_network: bool = False,
    defer_gpu: bool = False,
) -> KernelAwaitingConnection:
    """Restore a snapshot's kernel with fresh pipes; it waits for its resume request (`stopped`: frozen, too;
    `own_network`: in a network namespace of its own; `defer_gpu`: its GPU state still in host memory)."""
    control_read, control_write = os.pipe()
    report_read, report_write = os.pipe()
    handed = KernelPipes(
        stdin=os.open(os.devnull, os.O_RDONLY),
        stdout=forwarded_output(1),  # restored kernels write where a cold kernel of this server would
        stderr=forwarded_output(2),
        control=control_read,
        report=report_write,
    ).by_name()
    try:
        tree = store.restore_snapshot(
            manifest.id, key=manifest.key, pipes=handed, timeout=timeout, lazy=lazy, stopped=stopped,
            own_network=own_network, defer_gpu=defer_gpu,
        )  # fmt: skip
    except BaseException:
        os.close(control_write)
        os.close(report_read)
        raise
    finally:
        for fd in handed.values():
            os.close(fd)
    return KernelAwaitingConnection(tree, PipeChannel(report_read, control_write), manifest.id)


async def restore_off_the_loop(
    store: SnapshotStore, manifest: Manifest, *, lazy: bool, timeout: float, **flags: bool
) -> KernelAwaitingConnection:
    """`restore_awaiting_connection` in a daemon thread: the one way the server restores, for launches and spares.
    `flags`: its `stopped`, `own_network` and `defer_gpu`.

    A daemon thread, not asyncio.to_thread: a restore CRIU is stuck in must not hold up the server's exit
    (see `in_daemon_thread`).
    """
    return await in_daemon_thread(restore_awaiting_connection, store, manifest, lazy=lazy, timeout=timeout, **flags)


async def restored_and_resumed(
    store: SnapshotStore,
    manifest: Manifest,
    launch: ResumeRequest,
    lazy: bool,
    timeout: float,
    spares: bool,
    own_network: bool = False,
) -> tuple[KernelAwaitingConnection, Resumed, bool]:
    """Take the snapshot's spare (`spares`: if there is one) or restore it (`own_network`: in a network namespace
    of its own), then hand it `launch`; return the kernel, its Resumed event and whether it was a spare."""
    waiting = spare_pool.take(manifest.id, own_network) if spares else None
    from_spare = waiting is not None
    if waiting is None:
        waiting = await restore_off_the_loop(store, manifest, lazy=lazy, timeout=timeout, own_network=own_network)
    else:
        await waiting.put_gpu_state_back()  # a spare holds no GPU memory until now
    resumed = await waiting.resume(dataclasses.replace(launch, from_spare=from_spare), timeout)
    return waiting, resumed, from_spare


REFILL_DELAY_S = 1.0
SWEEP_INTERVAL_S = 5.0  # how often spares are checked against their store, notebooks and idle limit
MIN_SWEEP_INTERVAL_S = 0.5


def spare_size(manifest: Manifest) -> int:
    """What a spare of this snapshot counts against the memory budget: the setup's resident host memory at its
    dump. A GPU snapshot's was measured with its GPU state in host memory, where its spare keeps that state: a
    spare holds no GPU memory (kernels in use do)."""
    return manifest.rss_bytes or manifest.size_bytes


@dataclass
class SpareLimits:
    """The server's limits on its spares (SnapKernelSettings.spare_memory_bytes and spare_idle_seconds)."""

    memory_bytes: int = 0  # 0: no limit
    idle_seconds: float = 0.0  # 0: never retired for idleness


@dataclass
class Spare:
    """A spare kernel, its snapshot and the notebooks it is kept for."""

    kernel: KernelAwaitingConnection
    store: SnapshotStore
    manifest: Manifest
    notebooks: set[Path]
    own_network: bool = False  # restored into a network namespace of its own
    last_used: float = field(default_factory=time.time)  # restored, or a session of its notebooks was open

    @property
    def budget_bytes(self) -> int:
        """What this spare counts against the memory budget."""
        return spare_size(self.manifest)


@dataclass
class Filling:
    """A spare being restored now."""

    task: asyncio.Task[KernelAwaitingConnection | None]
    manifest: Manifest
    notebooks: set[Path]
    own_network: bool = False  # restored into a network namespace of its own
    wanted: bool = True  # False once retired while it was restored: it is killed on arrival


@dataclass
class Session:
    """A kernel of a notebook, as far as spares care: whether it is still open."""

    notebook: Path
    is_open: Callable[[], bool]


class NotebookSessions:
    """The kernels the server started, by notebook: when a session of each notebook was last seen open."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._last_open: dict[Path, float] = {}

    def opened(self, kernel_id: str, notebook: Path, is_open: Callable[[], bool]) -> None:
        """Note a kernel of `notebook` that the server started: its spares are in use while it is open."""
        key = notebook_key(notebook)
        self._sessions[kernel_id] = Session(key, is_open)
        self._last_open[key] = time.time()

    def closed(self, kernel_id: str) -> None:
        """Note that a kernel ended: its notebook's spares count as idle from now on, unless another is open."""
        session = self._sessions.pop(kernel_id, None)
        if session is not None:
            self._last_open[session.notebook] = time.time()

    def last_open(self) -> dict[Path, float]:
        """When a session of each notebook was last open (now, for those open now); forget those that ended
        without a shutdown through the server."""
        now = time.time()
        for kernel_id, session in list(self._sessions.items()):
            self._last_open[session.notebook] = now
            if not session.is_open():
                del self._sessions[kernel_id]
        return self._last_open


def notebook_key(notebook: str | os.PathLike[str]) -> Path:
    """The one spelling of a notebook's path that spares are kept under (absolute, no disk access)."""
    return Path(os.path.abspath(notebook))


def why_obsolete(
    manifest: Manifest, store: SnapshotStore, notebooks: Iterable[Path], replaced: set[str]
) -> tuple[str | None, set[Path]]:
    """Say why a spare of `manifest` is of no more use (None: it is), and which of its notebooks' setups changed.

    `replaced` holds the ids of the store's snapshots that newer ones of the same setup replaced. Reads the
    store and the notebooks: run it off the event loop.
    """
    try:
        store.get(manifest.id)
    except (SnapshotError, OSError):
        return "its snapshot was deleted", set()
    if manifest.id in replaced:
        return "a newer snapshot of the same setup replaced it", set()
    changed = set()
    for notebook in notebooks:
        try:
            section = read_setup_section(notebook)
        except (NotebookError, OSError):
            section = None
        if section is None or section.setup_hash != manifest.key:
            changed.add(notebook)
    return None, changed


def check_spares(spares: list[tuple[Spare, list[Path]]]) -> list[tuple[str | None, set[Path]]]:
    """`why_obsolete` for each spare (with its notebooks, copied on the event loop), reading each store once."""
    replaced: dict[Path, set[str]] = {}
    verdicts = []
    for spare, notebooks in spares:
        root = spare.store.root
        if root not in replaced:
            try:
                replaced[root] = {manifest.id for manifest in spare.store.replaced(spare.store.list())}
            except OSError:
                replaced[root] = set()
        verdicts.append(why_obsolete(spare.manifest, spare.store, notebooks, replaced[root]))
    return verdicts


def measured(entry: dict[str, Any]) -> dict[str, Any]:
    """A spare's description with its tree's real resident memory and whether it is frozen (reads /proc)."""
    frozen = all(is_stopped(member) for member in tree(entry["pid"]))
    return {**entry, "rss_bytes": tree_rss_bytes(entry["pid"]), "frozen": frozen}


def described(spares: Iterable[Spare]) -> list[dict[str, Any]]:
    """The live spares for the API (without their measured memory: `measured` adds it off the loop)."""
    now = time.time()
    return [
        {
            "snapshot": spare.manifest.id,
            "pid": spare.kernel.tree.pid,
            "notebooks": sorted(str(notebook) for notebook in spare.notebooks),
            "budget_bytes": spare.budget_bytes,
            "idle_s": round(max(now - spare.last_used, 0.0), 1),
        }
        for spare in spares
        if not spare.kernel.tree.ended()
    ]


def least_recently_used_over(
    budget: int, held: int, size: int, spares: Iterable[Spare], keep: str
) -> tuple[list[Spare], bool]:
    """The spares (never `keep`'s), least recently used first, to retire so that `size` more bytes fit `budget`
    beside the `held` ones (all but `keep`'s when even that is not enough), and whether `size` then fits."""
    retired = []
    for spare in sorted(spares, key=lambda spare: spare.last_used):
        if held + size <= budget:
            break
        if spare.manifest.id != keep:
            retired.append(spare)
            held -= spare.budget_bytes
    return retired, held + size <= budget


def sweep_interval(idle_seconds: float) -> float:
    """Seconds between sweeps: often enough to retire an idle spare within a quarter of its idle limit."""
    if idle_seconds <= 0:
        return SWEEP_INTERVAL_S
    return max(MIN_SWEEP_INTERVAL_S, min(SWEEP_INTERVAL_S, idle_seconds / 4))


class SparePool:
    """The server's spare kernels: at most one per snapshot, frozen until claimed, retired when of no use."""

    def __init__(self) -> None:
        self.spares: dict[str, Spare] = {}  # by snapshot id
        self._filling: dict[str, Filling] = {}
        self._generation = 0  # discard_all() starts a new one: spares of an older one are killed on arrival
        self.sweeper = SpareSweeper(self)
        self.sessions = NotebookSessions()
        self.limits = SpareLimits()
        self.log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logging.getLogger(__name__)

    @property
    def filling(self) -> bool:
        """Whether a spare is being restored now."""
        return bool(self._filling)

    def take(self, snapshot_id: str, own_network: bool = False) -> KernelAwaitingConnection | None:
        """Claim the live spare of a snapshot, if one is ready in the network asked for (`own_network`): it is
        continued and runs from here on (its GPU state, if any, still in host memory)."""
        spare = self.spares.pop(snapshot_id, None)
        if spare is None:
            return None
        if spare.kernel.tree.ended() or spare.own_network != own_network:
            spare.kernel.discard()
            return None
        spare.kernel.tree.resume()
        return spare.kernel

    def note_open_sessions(self) -> None:
        """Mark the spares of notebooks with an open session as used now."""
        last_open = self.sessions.last_open()
        for spare in self.spares.values():
            seen = [last_open[notebook] for notebook in spare.notebooks if notebook in last_open]
            spare.last_used = max([spare.last_used, *seen])

    def retire(self, snapshot_id: str, why: str) -> None:
        """Kill the spare of a snapshot, and the one being restored (on arrival)."""
        filling = self._filling.get(snapshot_id)
        if filling is not None:
            filling.wanted = False
        spare = self.spares.pop(snapshot_id, None)
        if spare is not None:
            self.log.info("snapkernel: retired the spare kernel of snapshot %s: %s", snapshot_id, why)
            spare.kernel.discard()

    def forget_notebook(self, notebook: Path, keep: str | None, why: str) -> None:
        """`notebook` now uses snapshot `keep` (None: none): retire its spares of other snapshots that no
        other notebook uses."""
        key = notebook_key(notebook)
        entries: list[tuple[str, Spare | Filling]] = [*self.spares.items(), *self._filling.items()]
        for snapshot_id, entry in entries:
            if snapshot_id == keep or key not in entry.notebooks:
                continue
            entry.notebooks.discard(key)
            if not entry.notebooks:
                self.retire(snapshot_id, why)

    def replace_after(self, build: asyncio.Future[Manifest], notebook: Path) -> None:
        """Once `build` publishes a snapshot of `notebook`, retire the notebook's spares of older snapshots."""

        def replaced(done: asyncio.Future[Manifest]) -> None:
            if not done.cancelled() and done.exception() is None:
                self.forget_notebook(notebook, done.result().id, "a new snapshot of its notebook replaced it")

        build.add_done_callback(replaced)

    def _make_room(self, size: int, keep: str) -> bool:
        """Retire the least recently used spares until one of `size` bytes fits the budget; say whether it does."""
        budget = self.limits.memory_bytes
        if budget <= 0:
            return True
        if size > budget:
            return False
        self.note_open_sessions()
        held = sum(spare.budget_bytes for spare in self.spares.values())
        held += sum(spare_size(filling.manifest) for filling in self._filling.values() if filling.wanted)
        retired, fits = least_recently_used_over(budget, held, size, self.spares.values(), keep)
        for spare in retired:
            self.retire(spare.manifest.id, "the spare kernels' memory budget is full (least recently used)")
        return fits

    def refill(
        self,
        store: SnapshotStore,
        manifest: Manifest,
        notebook: Path | None,
        *,
        lazy: bool,
        timeout: float,
        own_network: bool = False,
    ) -> None:
        """Restore a frozen spare for `manifest` in the background (`own_network`: into a network namespace of its
        own) unless one exists, is on its way, or does not fit the memory budget."""
        notebooks = {notebook_key(notebook)} if notebook is not None else set()
        filling_now = self._filling.get(manifest.id)
        known = self.spares.get(manifest.id) or (filling_now if filling_now and filling_now.wanted else None)
        if known is not None:
            known.notebooks |= notebooks
            return
        if not self._make_room(spare_size(manifest), keep=manifest.id):
            self.log.info(
                "snapkernel: no spare kernel for snapshot %s: it does not fit spare_memory_bytes", manifest.id
            )
            return
        generation = self._generation

        async def restore_after_the_start_settles() -> KernelAwaitingConnection | None:
            # The kernel just handed out runs its first cells now: a restore beside it would slow them.
            await asyncio.sleep(REFILL_DELAY_S)
            if generation != self._generation or not filling.wanted:
                return None  # discarded while it waited
            return await restore_off_the_loop(
                store, manifest, lazy=lazy, timeout=timeout, stopped=True, own_network=own_network, defer_gpu=True
            )

        filling = Filling(asyncio.ensure_future(restore_after_the_start_settles()), manifest, notebooks, own_network)
        self._filling[manifest.id] = filling
        filling.task.add_done_callback(lambda done: self._arrived(done, store, filling, generation))
        self.sweeper.keep_running()

    def _arrived(
        self,
        done: asyncio.Task[KernelAwaitingConnection | None],
        store: SnapshotStore,
        filling: Filling,
        generation: int,
    ) -> None:
        """Keep a spare whose restore ended, unless it was retired meanwhile; log a restore that failed."""
        snapshot_id = filling.manifest.id
        if self._filling.get(snapshot_id) is filling:
            del self._filling[snapshot_id]
        error = None if done.cancelled() else done.exception()
        if error is not None:  # the next start restores as it would without spares, and tries again
            self.log.warning("snapkernel: could not restore a spare kernel of snapshot %s: %s", snapshot_id, error)
        kernel = None if done.cancelled() or error is not None else done.result()
        if kernel is None:
            return
        if generation != self._generation or not filling.wanted:
            kernel.discard()  # retired while it was restored: nobody will take it
        else:
            self.spares[snapshot_id] = Spare(kernel, store, filling.manifest, filling.notebooks, filling.own_network)

    def describe(self) -> list[dict[str, Any]]:
        """The live spares for the API (without their measured memory: `measured` adds it off the loop)."""
        self.note_open_sessions()
        return described(self.spares.values())

    def discard_all(self) -> None:
        """Kill every spare; those being restored now are killed as soon as their restore ends."""
        self._generation += 1
        for spare in self.spares.values():
            spare.kernel.discard()
        self.spares.clear()

    async def close(self, timeout: float) -> None:
        """Kill every spare and wait (at most `timeout` s) until those being restored are killed too."""
        self.discard_all()
        loop = asyncio.get_running_loop()
        self.sweeper.stop(loop)
        filling = [entry.task for entry in self._filling.values() if entry.task.get_loop() is loop]
        # A task of an event loop that has ended never settles: forget it, or its snapshot gets no spare again.
        self._filling = {key: entry for key, entry in self._filling.items() if entry.task.get_loop() is loop}
        if filling:
            await asyncio.wait(filling, timeout=timeout)


class SpareSweeper:
    """Checks a pool's spares at intervals while it has any: retires those that died, idle out or are obsolete."""

    def __init__(self, pool: SparePool) -> None:
        self.pool = pool
        self._task: asyncio.Task[None] | None = None

    def keep_running(self) -> None:
        """Sweep at intervals while there are spares (it ends by itself when the last one goes)."""
        task = self._task
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._task = asyncio.ensure_future(self._sweep_while_spares())

    def stop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop sweeping (a sweep of another, ended event loop is only forgotten)."""
        if self._task is not None and self._task.get_loop() is loop:
            self._task.cancel()
        self._task = None

    async def _sweep_while_spares(self) -> None:
        """Sweep at intervals until no spare is left or on its way."""
        while self.pool.spares or self.pool.filling:
            await asyncio.sleep(sweep_interval(self.pool.limits.idle_seconds))
            try:
                await self.sweep()
            except Exception as error:  # a sweep that failed is tried again; it must not end the sweeping
                self.pool.log.warning("snapkernel: checking the spare kernels failed: %s", error)

    async def sweep(self) -> None:
        """Retire spares that died, are idle, whose snapshot is gone or replaced, or whose notebooks changed."""
        pool = self.pool
        pool.note_open_sessions()
        now, idle = time.time(), pool.limits.idle_seconds
        for snapshot_id, spare in list(pool.spares.items()):
            if spare.kernel.tree.ended():
                del pool.spares[snapshot_id]
                spare.kernel.discard()
            elif idle > 0 and now - spare.last_used > idle:
                pool.retire(snapshot_id, f"no session of its notebook was open for {idle:g} s")
        spares = list(pool.spares.values())
        verdicts = await asyncio.to_thread(check_spares, [(spare, list(spare.notebooks)) for spare in spares])
        for spare, (why, changed) in zip(spares, verdicts, strict=True):
            if pool.spares.get(spare.manifest.id) is not spare:
                continue  # taken or retired meanwhile
            spare.notebooks -= changed
            if why is None and changed and not spare.notebooks:
                why = "the setup cells of its notebook changed"
            if why is not None:
                pool.retire(spare.manifest.id, why)


spare_pool = SparePool()
