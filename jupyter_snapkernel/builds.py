"""Snapshot builds running in the server: one per setup section, with progress to poll."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import Manifest, SnapshotStore

from .builder import build_snapshot
from .setup_section import SetupSection

LOG_LINES = 200


@dataclass
class Build:
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
    task: asyncio.Task[Manifest] | None = None

    def progress(self, event: dict[str, Any]) -> None:
        """Record a progress event of the build kernel."""
        kind = event["event"]
        if kind == "cell":
            self.current_cell = int(event["index"]) + 1
            self.log.append(f"running setup cell {self.current_cell}/{self.cells}")
        elif kind == "cell_done":
            for output in event.get("outputs", []):
                if output["output_type"] == "stream":
                    self.log.extend(output["text"].splitlines())
        elif kind == "checkpoint":
            self.log.append("checkpointing the kernel")
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


class BuildManager:
    """Runs builds in threads; a request for a setup section that is building joins that build."""

    def __init__(self) -> None:
        self.builds: dict[str, Build] = {}

    def running(self, setup_hash: str) -> Build | None:
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
        on_ready: Callable[[Manifest], object] | None = None,
        gpu_state: bool | None = None,
    ) -> Build:
        """Start a build, or return the one already running for the same setup section."""
        running = self.running(section.setup_hash)
        if running is not None:
            return running
        build = Build(secrets.token_hex(6), notebook, section.setup_hash, len(section.cells))
        self.builds[build.id] = build
        loop = asyncio.get_running_loop()

        def progress(event: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(build.progress, event)

        build.task = asyncio.ensure_future(
            asyncio.to_thread(
                build_snapshot,
                notebook,
                store,
                section=section,
                progress=progress,
                timeout=timeout,
                gpu_state=gpu_state,
            )
        )
        build.task.add_done_callback(lambda done: self._finish(build, done, on_ready))
        return build

    @staticmethod
    def _finish(build: Build, done: asyncio.Task[Manifest], on_ready: Callable[[Manifest], object] | None) -> None:
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
            if on_ready is not None:
                on_ready(build.snapshot)


# One per server process: the REST API and the provisioner's automatic builds share it.
build_manager = BuildManager()
