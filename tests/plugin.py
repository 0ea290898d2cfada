"""Fixtures shared by every layer (a pytest plugin, registered in tests/conftest.py): stores and real kernels
behind a real jupyter_server. Plain helpers live in tests/helpers.py."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from snapkernel_engine import SnapshotStore
from tests.helpers import AFTER_SETUP, REPO, SETUP_CELLS, KernelSession, write_notebook

OpenKernel = Callable[[Path], Awaitable[KernelSession]]


def pytest_report_header(config: pytest.Config) -> str:
    """The free space where the tests write: a run that fills the disk fails in many unrelated places."""
    where = tempfile.gettempdir()
    return f"free disk space under {where}: {shutil.disk_usage(where).free / 1e9:.1f} GB"


def quiet_server_config() -> Config:
    """A server whose builds start only when a test asks for one, and without spare kernels."""
    return Config({"SnapKernelSettings": {"auto_build": False, "spare_kernels": False}})


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    """An empty snapshot store in the test's temporary directory."""
    return SnapshotStore(tmp_path / "store")


@pytest.fixture
def snapkernel_spec(jp_data_dir: Path) -> Path:
    """Install the wheel's kernelspec into the test's Jupyter data dir."""
    target = jp_data_dir / "kernels" / "snapkernel"
    shutil.copytree(REPO / "share" / "jupyter" / "kernels" / "snapkernel", target)
    return target


@pytest.fixture
def store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's own store folder, named in SNAPKERNEL_STORE for the server and its kernels."""
    root = tmp_path / "snapshots"
    monkeypatch.setenv("SNAPKERNEL_STORE", str(root))
    return root


@pytest.fixture
def kernel_store(store_root: Path) -> SnapshotStore:
    """The store the server's kernels use."""
    from jupyter_snapkernel.paths import open_store

    return open_store(store_root)


@pytest.fixture
def notebook(jp_root_dir: Path) -> Path:
    """A notebook of SETUP_CELLS (the second one marked) and one cell after, in the server's root."""
    return write_notebook(jp_root_dir / "analysis.ipynb", SETUP_CELLS, marked=1, after=[AFTER_SETUP])


@pytest.fixture
def connect(jp_serverapp: Any) -> Iterator[Callable[[str], Awaitable[KernelSession]]]:
    """Connect a client to a kernel the server started; every client is closed after the test."""
    sessions: list[KernelSession] = []

    async def to(kernel_id: str) -> KernelSession:
        session = KernelSession(jp_serverapp, kernel_id)
        sessions.append(session)
        await session.client.wait_for_ready(timeout=60)  # iopub is subscribed from here on
        return session

    yield to
    for session in sessions:
        session.close()


@pytest.fixture
def open_session(jp_fetch: Any, jp_root_dir: Path, snapkernel_spec: Path, connect: Any) -> Any:
    """Start a notebook session through the sessions API and return a client on its kernel."""

    async def start(notebook: Path, name: str | None = None) -> KernelSession:
        body = {
            "path": str(notebook.relative_to(jp_root_dir)),
            "name": name or notebook.name,
            "type": "notebook",
            "kernel": {"name": "snapkernel"},
        }
        response = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
        return await connect(json.loads(response.body)["kernel"]["id"])

    return start


@pytest.fixture
def open_kernel(jp_serverapp: Any, jp_root_dir: Path, snapkernel_spec: Path, connect: Any) -> OpenKernel:
    """Start another kernel for a notebook through the server's kernel manager (as a second session would)."""
    launches = itertools.count()

    async def start(notebook: Path) -> KernelSession:
        kernel_id = await jp_serverapp.kernel_manager.start_kernel(
            kernel_name="snapkernel",
            path=str(notebook.parent.relative_to(jp_root_dir)),
            env={**os.environ, "JPY_SESSION_NAME": str(notebook), "LAUNCH_TOKEN": f"token-{next(launches)}"},
        )
        return await connect(kernel_id)

    return start
