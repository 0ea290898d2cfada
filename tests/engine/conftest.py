"""Fixtures that start real processes for CRIU to checkpoint."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from snapkernel_engine import RestoredTree

WORKLOAD = Path(__file__).with_name("workload.py")


@dataclass
class Workload:
    """A running workload process with pipes on its stdin and stdout."""

    process: subprocess.Popen[str]
    checksum: str

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Conversation:
    """Pipes to talk to a restored workload."""

    tree: RestoredTree
    to_tree: IO[str]
    from_tree: IO[str]

    def ask(self, command: str) -> dict[str, object]:
        self.to_tree.write(command + "\n")
        self.to_tree.flush()
        return json.loads(self.from_tree.readline())


def start_workload(size_mb: int) -> Workload:
    """Start the workload in its own session and wait until its data is in memory."""
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), str(size_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # pytest captures into deleted temp files; CRIU restores those as "ghost" files in the
        # same directory, which concurrent restores would race on.
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    ready = json.loads(process.stdout.readline())
    return Workload(process, str(ready["checksum"]))


def stop_session(pid: int) -> None:
    """Kill every process of the session led by `pid`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


@pytest.fixture
def workload() -> Iterator[Workload]:
    """A 100 MB workload with a thread and a child process, killed after the test."""
    running = start_workload(100)
    yield running
    stop_session(running.pid)
    running.process.wait()


def pipes_for_restore() -> tuple[dict[str, int], IO[str], IO[str], list[int]]:
    """Make new stdin/stdout pipes: the fds to hand over, our ends, and the fds to close after."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    handed = {"stdin": stdin_read, "stdout": stdout_write}
    return handed, os.fdopen(stdin_write, "w"), os.fdopen(stdout_read), [stdin_read, stdout_write]
