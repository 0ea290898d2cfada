"""Fixtures that start real processes for CRIU to checkpoint."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import Workload, start_workload, stop_session


@pytest.fixture
def workload() -> Iterator[Workload]:
    """A 100 MB workload with a thread and a child process, killed after the test."""
    running = start_workload(100)
    yield running
    stop_session(running.pid)
    running.process.wait()
