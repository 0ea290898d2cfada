"""Shared fixtures: a private snapshot store per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapkernel_engine import SnapshotStore

pytest_plugins = ("pytest_jupyter.jupyter_server", "tests.users", "tests.reliability.stores")


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    """An empty snapshot store in the test's temporary directory."""
    return SnapshotStore(tmp_path / "store")
