"""Snapshot builds running in the server: one per setup section, with progress to poll."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from snapkernel_engine import Manifest, SnapshotError, SnapshotStore
from snapkernel_engine.messages import CellDone, CellStarted

from ..answers import BuildAnswer
from ..config import SnapKernelSettings
from ..notebook.binding import CLI_MODULE
from ..notebook.builder import BuildProgress, build_within_limits, progress_line, write_queue_record
from ..notebook.setup_section import SetupSection
from ..notebook.state import RunningBuild

T = TypeVar("T")
LOG_LINES = 200
KEPT_BUILDS = 50  # finished builds a server remembers for GET builds and builds/ID


@dataclass
class BackgroundBuild:
    """One snapshot build and what it has done so far."""

    id: str
    notebook: Path
    setup_hash: str
    cells: int
    started: float = field(default_factory=time.time)  # when it was asked for (queued or not)
    state: str = "queued"  # queued | building | ready | failed
    current_cell: int | None = None
    log: list[str] = field(default_factory=list)
    snapshot: Manifest | None = None
    error: str | None = None
    finished: float | None = None
    task: asyncio.Future[Manifest] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    work: Callable[[], Manifest] | None = None  # what runs in the build's thread once a place is free
    store: SnapshotStore | None = None  # where it publishes (and where its place in the queue is recorded)

    def progress(self, event: BuildProgress) -> None:
        """Record a progress event of the build kernel."""
        if isinstance(event, CellStarted):
            self.current_cell = event.index + 1
        line = progress_line(event, self.cells)
        if line:
            self.log.append(line)
        if isinstance(event, CellDone):
            for output in event.outputs:
                if output["output_type"] == "stream":
                    self.log.extend(output["text"].splitlines())
        del self.log[:-LOG_LINES]

    def finish(self, done: asyncio.Future[Manifest]) -> None:
        """Record how the build's thread ended: its snapshot, or why it failed."""
        self.finished = time.time()
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self.state = "failed"
            self.error = "cancelled" if done.cancelled() else str(error)
            self.log.append(f"failed: {self.error}")
        else:
            self.state = "ready"
            self.snapshot = done.result()
            self.log.append(f"snapshot {self.snapshot.id} ready")

    def to_dict(self, queue_ahead: int | None = None) -> BuildAnswer:
        """The build as the REST API answers it; `queue_ahead` is how many queued builds run before this queued one."""
        end = self.finished or time.time()
        return BuildAnswer(
            id=self.id,
            path=str(self.notebook),
            setup_hash=self.setup_hash,
            state=self.state,
            queue_ahead=queue_ahead if self.state == "queued" else None,
            cells=self.cells,
            current_cell=self.current_cell,
            elapsed_s=round(end - self.started, 3),
            log=self.log,
            snapshot=self.snapshot.id if self.snapshot else None,
            error=self.error,
        )


class BuildQueueFull(SnapshotError):
    """The server's build queue is full: the request is refused (HTTP 429), nothing is queued."""


ACTIVE_STATES = ("queued", "building")


class QueueRecords:
    """A server's queue, written into each store it builds for, for kernels and other processes to read."""

    def __init__(self) -> None:
        self.stores: dict[Path, SnapshotStore] = {}  # every store a build was queued for
        self._records: dict[Path, list[str]] = {}  # what each store's queue record should say now
        self._lock = threading.Lock()

    def record(self, queue: Iterable[BackgroundBuild]) -> None:
        """Write each store's part of `queue`, in order, off the event loop."""
        queue = list(queue)
        for build in queue:
            assert build.store is not None
            self.stores.setdefault(build.store.root, build.store)
        self._records = {
            root: [build.setup_hash for build in queue if build.store is not None and build.store.root == root]
            for root in self.stores
        }
        threading.Thread(target=self._write, daemon=True, name="snapkernel-queue").start()

    def _write(self) -> None:
        """Write the queue records as they are now (a later call may have changed them: the latest wins)."""
        with self._lock:
            for root, setup_hashes in self._records.items():
                # On failure only `%snapshot status` and other processes miss the queue: this server knows it.
                with contextlib.suppress(SnapshotError, OSError):
                    write_queue_record(self.stores[root], setup_hashes)

    def forget(self) -> None:
        """Remove this server's queue records now (its queue is empty): a stopping server leaves none."""
        self._records = {root: [] for root in self.stores}
        self._write()


class BackgroundBuilds:
    """Runs builds in threads, at most `max_concurrent` at once, the others queued in order of request.

    A request for a setup section that is queued or building joins that build; one past `max_queued`
    waiting builds raises BuildQueueFull.
    """

    def __init__(self, max_concurrent: int = 1, max_queued: int = 8) -> None:
        self.builds: dict[str, BackgroundBuild] = {}
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.queue: deque[BackgroundBuild] = deque()
        self._queue_records = QueueRecords()

    def running(self, setup_hash: str) -> BackgroundBuild | None:
        """Return the queued or running build of a setup section."""
        for build in list(self.builds.values()):  # a copy: status questions ask from worker threads
            if build.setup_hash == setup_hash and build.state in ACTIVE_STATES and _loop_alive(build):
                return build
        return None

    def running_build(self, setup_hash: str) -> RunningBuild | None:
        """This server's queued or running build of a setup section, as `status.notebook_state` reads it."""
        build = self.running(setup_hash)
        return None if build is None else RunningBuild(build.state, self.queue_ahead(build), build.id)

    def queue_ahead(self, build: BackgroundBuild) -> int | None:
        """How many queued builds run before this one (None: it is not queued)."""
        queue = list(self.queue)  # a copy: asked from worker threads too
        return queue.index(build) if build in queue else None

    def describe(self, build: BackgroundBuild) -> BuildAnswer:
        """A build as JSON-ready data, with its place in the queue."""
        return build.to_dict(self.queue_ahead(build))

    def start(
        self, notebook: Path, section: SetupSection, store: SnapshotStore, settings: SnapKernelSettings
    ) -> BackgroundBuild:
        """Queue a build (it starts at once when a place is free), or return the one queued or running
        for the same setup section; raise BuildQueueFull when the queue is full.

        The build runs `build_within_limits` in its thread: the administrator's settings, then the
        store's housekeeping, which may take a while and must not hold up the server's event loop.
        """
        running = self.running(section.setup_hash)
        if running is not None:
            return running
        if self._building() >= self.max_concurrent and len(self.queue) >= self.max_queued:
            raise BuildQueueFull(
                f"{len(self.queue)} snapshot builds are already waiting (SnapKernelSettings.max_queued_builds): "
                "try again once one has finished"
            )
        build = BackgroundBuild(secrets.token_hex(6), notebook, section.setup_hash, len(section.cells))
        loop = asyncio.get_running_loop()

        def progress(event: BuildProgress) -> None:
            loop.call_soon_threadsafe(build.progress, event)

        build.work = functools.partial(
            build_within_limits, notebook, store, section, settings, progress=progress, cancel=build.cancel
        )
        build.store = store
        build.task = loop.create_future()
        self.forget_old_builds()
        self.builds[build.id] = build
        self.queue.append(build)
        self._start_queued()
        if build.state == "queued":
            self._queue_records.record(self.queue)
        return build

    def forget_old_builds(self) -> None:
        """Keep only the last KEPT_BUILDS finished builds (GET builds lists them; older ones are gone)."""
        finished = [key for key, build in self.builds.items() if build.state not in ACTIVE_STATES]
        for key in finished[:-KEPT_BUILDS]:
            del self.builds[key]

    def _building(self) -> int:
        """How many builds run now."""
        return sum(build.state == "building" and _loop_alive(build) for build in self.builds.values())

    def _start_queued(self) -> None:
        """Start queued builds, oldest first, while fewer than `max_concurrent` run."""
        started = False
        while self.queue and self._building() < self.max_concurrent:
            build = self.queue.popleft()
            if not _loop_alive(build):
                continue  # queued by a server that has ended (an earlier test's, in one process)
            assert build.work is not None
            build.state, started = "building", True
            thread = in_daemon_thread(build.work)
            thread.add_done_callback(lambda done, build=build: self._settle(build, done))  # type: ignore[misc]
        if started and self._queue_records.stores:
            self._queue_records.record(self.queue)

    def _settle(self, build: BackgroundBuild, done: asyncio.Future[Manifest]) -> None:
        """Record how a build's thread ended, tell whoever waits on the build, and start the next queued one."""
        build.finish(done)
        if build.task is not None and not build.task.done():
            if done.cancelled():
                build.task.cancel()
            elif (error := done.exception()) is not None:
                build.task.set_exception(error)
                build.task.exception()  # retrieved: a build nobody waits on must not log "never retrieved"
            else:
                build.task.set_result(done.result())
        self._start_queued()

    async def stop_all(self, timeout: float) -> None:
        """Drop the queued builds, stop every running one, and wait (at most `timeout` s) until their build
        kernels are gone."""
        while self.queue:  # first, or a stopped build would start the next one
            dropped = self.queue.popleft()
            dropped.state, dropped.error, dropped.finished = "failed", "cancelled: the server stopped", time.time()
            dropped.log.append(f"failed: {dropped.error}")
            if _loop_alive(dropped):  # the loop of an ended server could not run the task's callbacks
                assert dropped.task is not None
                dropped.task.cancel()
        if self._queue_records.stores:
            await asyncio.to_thread(self._queue_records.forget)
        running = [build for build in self.builds.values() if build.state == "building"]
        for build in running:
            build.cancel.set()
        loop = asyncio.get_running_loop()  # a task of an event loop that has ended would never finish
        tasks = [build.task for build in running if build.task is not None and build.task.get_loop() is loop]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)


def _loop_alive(build: BackgroundBuild) -> bool:
    """Whether the event loop that follows the build still runs (a build of a server that has ended never finishes)."""
    return build.task is not None and not build.task.get_loop().is_closed()


def in_daemon_thread(function: Callable[..., T], *args: Any, **kwargs: Any) -> asyncio.Future[T]:
    """Run `function` in a daemon thread; return a future of its result on the running event loop.

    Unlike asyncio.to_thread, the process does not wait for the thread when it exits: a build waiting
    on another process's build, or a restore CRIU is stuck in, cannot keep a stopping server alive
    (build and restored kernels are tied to the server and die with it).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            outcome: tuple[T | None, BaseException | None] = (function(*args, **kwargs), None)
        except BaseException as error:
            outcome = (None, error)
        with contextlib.suppress(RuntimeError):  # the event loop has ended: nobody waits for the result
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, daemon=True, name=f"snapkernel-{getattr(function, '__name__', 'work')}").start()
    return future


# One per server process: the REST API and the provisioner's automatic builds share it.
background_builds = BackgroundBuilds()


def start_build(
    builds: BackgroundBuilds, notebook: Path, section: SetupSection, store: SnapshotStore, settings: SnapKernelSettings
) -> BackgroundBuild:
    """Queue (or join) the build of a notebook's snapshot in this server: the one way its automatic builds and
    `POST builds` start one. Once it publishes, the notebook's spares of older snapshots are retired."""
    from .spares import spare_pool  # imported here: spares runs its restores through this module

    build = builds.start(notebook, section, store, settings)
    assert build.task is not None
    spare_pool.replace_after(build.task, notebook)
    return build


def build_in_own_process(
    notebook: Path, store: SnapshotStore, log: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> None:
    """Build a notebook's snapshot with `jupyter snapkernel build`, in a session of its own: for launchers that
    do not outlive their kernel start (the kernelspec's launcher, papermill, nbclient), whose own threads would
    stop with them. A build of the same setup already running elsewhere is waited for, not repeated."""
    command = [sys.executable, "-m", CLI_MODULE, "--store", str(store.root), "build", "--quiet", str(notebook)]
    try:
        # Its own session: an interrupt of the kernel, or the end of the runner, must not stop the build.
        subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd=notebook.parent,
        )  # fmt: skip
    except OSError as error:
        log.warning("snapkernel: could not start the snapshot build of %s: %s", notebook, error)
        return
    log.info("snapkernel: building the snapshot of %s in the background", notebook.name)
