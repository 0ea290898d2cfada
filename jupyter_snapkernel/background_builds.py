"""Snapshot builds running in the server: one per setup section, with progress to poll."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from snapkernel_engine import Manifest, SnapshotError, SnapshotStore

from .builder import build_snapshot, progress_line
from .setup_section import SetupSection

T = TypeVar("T")
LOG_LINES = 200


@dataclass
class BackgroundBuild:
    """One snapshot build and what it has done so far."""

    id: str
    notebook: Path
    setup_hash: str
    cells: int
    started: float = field(default_factory=time.time)
    state: str = "building"  # building | ready | failed
    current_cell: int | None = None
    log: list[str] = field(default_factory=list)
    snapshot: Manifest | None = None
    error: str | None = None
    finished: float | None = None
    task: asyncio.Future[Manifest] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def progress(self, event: dict[str, Any]) -> None:
        """Record a progress event of the build kernel."""
        if event["event"] == "cell":
            self.current_cell = int(event["index"]) + 1
        line = progress_line(event, self.cells)
        if line:
            self.log.append(line)
        if event["event"] == "cell_done":
            for output in event.get("outputs", []):
                if output["output_type"] == "stream":
                    self.log.extend(output["text"].splitlines())
        del self.log[:-LOG_LINES]

    def to_dict(self) -> dict[str, Any]:
        """The build as JSON-ready data."""
        end = self.finished or time.time()
        return {
            "id": self.id,
            "path": str(self.notebook),
            "setup_hash": self.setup_hash,
            "state": self.state,
            "cells": self.cells,
            "current_cell": self.current_cell,
            "elapsed_s": round(end - self.started, 3),
            "log": self.log,
            "snapshot": self.snapshot.id if self.snapshot else None,
            "error": self.error,
        }


class BackgroundBuilds:
    """Runs builds in threads; a request for a setup section that is building joins that build."""

    def __init__(self) -> None:
        self.builds: dict[str, BackgroundBuild] = {}

    def running(self, setup_hash: str) -> BackgroundBuild | None:
        """Return the running build of a setup section."""
        for build in self.builds.values():
            if build.setup_hash == setup_hash and build.state == "building":
                return build
        return None

    def start(
        self,
        notebook: Path,
        section: SetupSection,
        store: SnapshotStore,
        timeout: float,
        after_publish: Callable[[Manifest], object] | None = None,
        gpu_state: bool | None = None,
    ) -> BackgroundBuild:
        """Start a build, or return the one already running for the same setup section.

        `after_publish` runs in the build's thread once the snapshot is published (store housekeeping:
        it may take a while, and must not hold up the server's event loop).
        """
        running = self.running(section.setup_hash)
        if running is not None:
            return running
        build = BackgroundBuild(secrets.token_hex(6), notebook, section.setup_hash, len(section.cells))
        self.builds[build.id] = build
        loop = asyncio.get_running_loop()

        def progress(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(build.progress, event)

        def build_then_tidy() -> Manifest:
            manifest = build_snapshot(
                notebook, store, section=section, progress=progress, timeout=timeout, gpu_state=gpu_state,
                cancel=build.cancel,
            )  # fmt: skip
            if after_publish is not None:
                try:
                    after_publish(manifest)
                except (SnapshotError, OSError) as error:  # the snapshot is there all the same
                    progress({"event": "note", "text": f"store housekeeping failed: {error}"})
            return manifest

        build.task = in_daemon_thread(build_then_tidy)
        build.task.add_done_callback(lambda done: self._finish(build, done))
        return build

    async def stop_all(self, timeout: float) -> None:
        """Stop every running build and wait (at most `timeout` s) until their build kernels are gone."""
        running = [build for build in self.builds.values() if build.state == "building"]
        for build in running:
            build.cancel.set()
        loop = asyncio.get_running_loop()  # a task of an event loop that has ended would never finish
        tasks = [build.task for build in running if build.task is not None and build.task.get_loop() is loop]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    @staticmethod
    def _finish(build: BackgroundBuild, done: asyncio.Future[Manifest]) -> None:
        build.finished = time.time()
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            build.state = "failed"
            build.error = "cancelled" if done.cancelled() else str(error)
            build.log.append(f"failed: {build.error}")
        else:
            build.state = "ready"
            build.snapshot = done.result()
            build.log.append(f"snapshot {build.snapshot.id} ready")


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
