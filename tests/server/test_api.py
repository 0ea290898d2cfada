"""The REST API under /snapkernel/api/ through a real jupyter_server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from jupyter_snapkernel.launch.start_plan import plan_start
from jupyter_snapkernel.notebook.binding import notebook_binding
from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.paths import open_store
from snapkernel_engine import SnapshotStore
from tests.helpers import SETUP_CELLS, write_notebook


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def jp_server_config(store_root: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}},
            "SnapKernelSettings": {"store_root": str(store_root), "auto_build": False, "spare_kernels": False},
        }
    )


@pytest.fixture
def store(store_root: Path) -> SnapshotStore:
    return open_store(store_root)


@pytest.fixture
def notebook(jp_root_dir: Path) -> Path:
    return write_notebook(jp_root_dir / "analysis.ipynb", SETUP_CELLS, marked=1)


async def api(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    response = await jp_fetch("snapkernel", "api", *parts, **kwargs)
    return json.loads(response.body) if response.body else None


async def wait_for_build(jp_fetch: Any, build_id: str) -> dict[str, Any]:
    for _ in range(1200):
        build = await api(jp_fetch, "builds", build_id)
        if build["state"] not in ("queued", "building"):
            return build
        await asyncio.sleep(0.1)
    raise AssertionError("the build did not finish")


async def test_status_build_list_and_delete(jp_fetch: Any, notebook: Path, store: SnapshotStore) -> None:
    status = await api(jp_fetch, "status", params={"path": "analysis.ipynb"})
    assert status["state"] == "none"

    build = await api(jp_fetch, "builds", method="POST", body=json.dumps({"path": "analysis.ipynb"}))
    assert build["state"] == "building"
    during = await api(jp_fetch, "status", params={"path": "analysis.ipynb"})
    assert during["state"] == "building"
    assert during["build"] == build["id"]
    done = await wait_for_build(jp_fetch, build["id"])
    assert done["state"] == "ready", done
    assert any("running setup cell 2/2" in line for line in done["log"])
    assert done["elapsed_s"] > 0

    ready = await api(jp_fetch, "status", params={"path": "analysis.ipynb"})
    assert ready["state"] == "ready"
    assert ready["snapshot"] == done["snapshot"]
    assert ready["size_bytes"] > 0 and ready["age_s"] >= 0

    listed = (await api(jp_fetch, "snapshots"))["snapshots"]
    assert [entry["id"] for entry in listed] == [done["snapshot"]]
    assert listed[0]["notebook"] == "analysis.ipynb"
    assert {"setup_hash", "hardware", "size_bytes", "created", "stale"} <= listed[0].keys()

    response = await jp_fetch("snapkernel", "api", "snapshots", done["snapshot"], method="DELETE")
    assert response.code == 204
    assert (await api(jp_fetch, "snapshots"))["snapshots"] == []
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("snapkernel", "api", "snapshots", done["snapshot"], method="DELETE")
    assert missing.value.code == 404


async def test_stale_and_failed_states(jp_fetch: Any, jp_root_dir: Path, notebook: Path, store: SnapshotStore) -> None:
    build_snapshot(notebook, store)
    write_notebook(notebook, [SETUP_CELLS[0], SETUP_CELLS[1] + "\nchanged = True"], marked=1)
    stale = await api(jp_fetch, "status", params={"path": "analysis.ipynb"})
    assert stale["state"] == "stale"
    assert "setup cells changed" in stale["reason"]

    write_notebook(jp_root_dir / "broken.ipynb", ["raise RuntimeError('setup broke')"], marked=0)
    build = await api(jp_fetch, "builds", method="POST", body=json.dumps({"path": "broken.ipynb"}))
    done = await wait_for_build(jp_fetch, build["id"])
    assert done["state"] == "failed"
    assert "RuntimeError: setup broke" in done["error"]
    failed = await api(jp_fetch, "status", params={"path": "broken.ipynb"})
    assert failed["state"] == "failed"
    assert "setup broke" in failed["reason"]


async def test_two_concurrent_build_requests_give_one_build(
    jp_fetch: Any, notebook: Path, store: SnapshotStore
) -> None:
    body = json.dumps({"path": "analysis.ipynb"})
    first, second = await asyncio.gather(
        api(jp_fetch, "builds", method="POST", body=body), api(jp_fetch, "builds", method="POST", body=body)
    )
    assert first["id"] == second["id"]
    done = await wait_for_build(jp_fetch, first["id"])
    assert done["state"] == "ready"
    assert len(store.list()) == 1


async def test_kernel_start_report(
    jp_fetch: Any, open_session: Any, notebook: Path, store: SnapshotStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SNAPKERNEL_STORE", str(store.root))
    cold = await open_session(notebook)
    report = await api(jp_fetch, "kernels", cold.kernel_id)
    assert report["start"] == "cold" and report["reason"] == "no snapshot yet"
    manifest = build_snapshot(notebook, store)
    await jp_fetch("api", "kernels", cold.kernel_id, "restart", method="POST", body="")
    report = await api(jp_fetch, "kernels", cold.kernel_id)
    assert report["start"] == "restored"
    assert report["snapshot"] == manifest.id
    assert report["restore_s"] > 0 and report["setup_s"] > 0
    with pytest.raises(HTTPClientError) as missing:
        await jp_fetch("snapkernel", "api", "kernels", "no-such-kernel")
    assert missing.value.code == 404


@pytest.mark.parametrize(
    "path",
    ["../outside.ipynb", "/etc/passwd", "sub/../../outside.ipynb", "escape/outside.ipynb"],
)
async def test_paths_outside_the_root_are_refused(
    jp_fetch: Any, jp_root_dir: Path, tmp_path: Path, path: str, store: SnapshotStore
) -> None:
    outside = write_notebook(tmp_path / "outside.ipynb", ["x = 1"], marked=0)
    (jp_root_dir / "escape").symlink_to(outside.parent)
    for request in (
        {"parts": ("status",), "params": {"path": path}},
        {"parts": ("builds",), "method": "POST", "body": json.dumps({"path": path})},
    ):
        parts = request.pop("parts")
        with pytest.raises(HTTPClientError) as refused:
            await jp_fetch("snapkernel", "api", *parts, **request)
        assert refused.value.code in {403, 404}
        assert refused.value.code == 403 or path == "/etc/passwd"
    assert store.list() == []


@pytest.mark.parametrize(
    ("method", "parts", "body"),
    [
        ("GET", ("snapshots",), None),
        ("GET", ("status",), None),
        ("POST", ("builds",), "{}"),
        ("GET", ("builds", "abc"), None),
        ("DELETE", ("snapshots", "abc"), None),
        ("GET", ("kernels", "abc"), None),
    ],
)
async def test_requests_without_a_token_get_403(
    jp_fetch: Any, method: str, parts: tuple[str, ...], body: str | None, store: SnapshotStore
) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("snapkernel", "api", *parts, method=method, body=body, headers={"Authorization": ""})
    assert refused.value.code == 403
    assert b"snapshot" not in (refused.value.response.body or b"")


def test_the_extension_is_enabled_by_the_shipped_config() -> None:
    shipped = Path(__file__).resolve().parents[2] / "jupyter-config" / "jupyter_server_config.d"
    config = json.loads((shipped / "jupyter_snapkernel.json").read_text())
    assert config["ServerApp"]["jpserver_extensions"]["jupyter_snapkernel"] is True


async def test_status_of_edited_cells_says_stale_before_any_save(
    jp_fetch: Any, notebook: Path, store: SnapshotStore
) -> None:
    """POST status with the cells being edited: ready for the saved ones, stale once a setup cell differs."""
    manifest = build_snapshot(notebook, store)
    saved = json.loads(notebook.read_text())
    cells = [{key: cell[key] for key in ("cell_type", "source", "metadata")} for cell in saved["cells"]]
    body = {"path": "analysis.ipynb", "cells": cells}
    ready = await api(jp_fetch, "status", method="POST", body=json.dumps(body))
    assert (ready["state"], ready["snapshot"], ready["source"]) == ("ready", manifest.id, "own")
    assert ready["setup_cells"] == [0, 1] and ready["setup_end"] == 1

    cells[1]["source"] += "\nedited = True"
    stale = await api(jp_fetch, "status", method="POST", body=json.dumps(body))
    assert stale["state"] == "stale" and "setup cells changed" in stale["reason"]
    assert (await api(jp_fetch, "status", params={"path": "analysis.ipynb"}))["state"] == "ready", "the file is unsaved"

    cells.insert(0, {"cell_type": "markdown", "source": "# Title", "metadata": {}})
    cells[2]["metadata"] = {}
    untagged = await api(jp_fetch, "status", method="POST", body=json.dumps(body))
    assert (untagged["state"], untagged["setup_cells"], untagged["setup_end"]) == ("none", [], None)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"path": "analysis.ipynb", "cells": "x"}, "`cells` must be a list of cells"),
        (
            {"path": "analysis.ipynb", "cells": [{"source": "1"}]},
            "cells[0] must be an object with a string `cell_type`",
        ),
        ({"path": "analysis.ipynb", "cells": [{"cell_type": "code", "source": 5}]}, "cells[0].source must be"),
        (
            {"path": "analysis.ipynb", "cells": [{"cell_type": "code", "metadata": {"tags": "snapshot"}}]},
            "cells[0].metadata.tags must be a list of strings",
        ),
        ({"path": "analysis.ipynb", "cells": [], "metadata": []}, "`metadata` must be an object"),
    ],
)
async def test_malformed_cells_get_400_saying_what_is_wrong(
    jp_fetch: Any, notebook: Path, body: dict[str, Any], problem: str
) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_fetch("snapkernel", "api", "status", method="POST", body=json.dumps(body))
    assert refused.value.code == 400
    assert problem in json.loads(refused.value.response.body)["message"]


async def test_info_names_the_kernelspecs_snapkernel_starts(jp_fetch: Any, snapkernel_spec: Path) -> None:
    info = await api(jp_fetch, "info")
    assert info["kernels"] == ["snapkernel"] and info["version"]


async def test_a_build_the_api_started_is_one_answer_for_the_status_and_the_kernel_start_plan(
    jp_fetch: Any, jp_serverapp: Any, notebook: Path, store: SnapshotStore
) -> None:
    """While a POST builds build runs, GET status and the provisioner's start plan both say so, with its id."""
    body = json.dumps({"path": "analysis.ipynb"})
    build = await api(jp_fetch, "builds", method="POST", body=body)
    status = await api(jp_fetch, "status", params={"path": "analysis.ipynb"})
    settings = jp_serverapp.web_app.settings["snapkernel_settings"]
    env = {**os.environ, "JPY_SESSION_NAME": str(notebook)}
    plan = await asyncio.to_thread(plan_start, settings, "snapkernel", env, None, notebook_binding(env))
    done = await wait_for_build(jp_fetch, build["id"])
    assert done["state"] == "ready"
    assert status["state"] in {"queued", "building"} and status["build"] == build["id"]
    assert plan.state is not None and (plan.state.state, plan.state.build) == (status["state"], build["id"])
    assert plan.snapshot is None and plan.reason == "no snapshot yet"
