"""A notebook whose setup fails is built once, not at every start, and says so where the user looks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_snapkernel.launch.background_builds import background_builds
from tests.helpers import write_notebook

FAILING = ["value = 1", "raise RuntimeError('the data is not there yet')"]


@pytest.fixture
def jp_server_config(store_root: Path) -> Config:
    """The extension with automatic builds on, as users get it."""
    settings = {"store_root": str(store_root), "auto_build": True, "spare_kernels": False}
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}}, "SnapKernelSettings": settings})


async def builds_of(notebook: Path) -> list[Any]:
    """The server's builds of a notebook, once none of them is running."""
    for _ in range(600):
        builds = [build for build in background_builds.builds.values() if build.notebook == notebook]
        if all(build.state not in ("queued", "building") for build in builds):
            return builds
        await asyncio.sleep(0.1)
    raise AssertionError("a build did not finish")


async def test_a_failing_setup_is_built_once_however_often_the_notebook_starts(
    open_kernel: Any, jp_fetch: Any, jp_root_dir: Path
) -> None:
    """Three cold starts, one failed build; status and %snapshot status show it; changed cells build again."""
    notebook = write_notebook(jp_root_dir / "failing.ipynb", FAILING, marked=1)
    for _ in range(3):
        session = await open_kernel(notebook)
        assert not session.restored
        builds = await builds_of(notebook)
    assert [build.state for build in builds] == ["failed"]
    assert "the data is not there yet" in builds[0].error

    response = await jp_fetch("snapkernel", "api", "status", params={"path": "failing.ipynb"})
    status = json.loads(response.body)
    assert status["state"] == "failed" and "the data is not there yet" in status["reason"], status
    shown = await session.execute("%snapshot status")
    assert "notebook snapshot: failed" in shown.stdout and "the data is not there yet" in shown.stdout, shown.stdout
    reason = await session.value("get_ipython().kernel.start_info.reason")
    assert reason.startswith("the last snapshot build failed: setup cell 2 of failing.ipynb failed"), reason

    write_notebook(notebook, [FAILING[0], "raise RuntimeError('still not there')"], marked=1)
    await open_kernel(notebook)
    builds = await builds_of(notebook)
    assert [build.state for build in builds] == ["failed", "failed"], "changed cells are built again"
