"""What users and admins see is true and one: states, savings, process titles and API answers."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_snapkernel import env_names
from jupyter_snapkernel.kernel.process_title import BUILD_TITLE, RESTORED_TITLE, SPARE_TITLE
from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.paths import open_store
from snapkernel_engine import SnapshotStore
from tests.helpers import SETUP_CELLS, KernelSession, write_notebook
from tests.servers import LocalServer


@pytest.fixture
def shared_root(tmp_path: Path) -> Path:
    return tmp_path / "course-snapshots"


@pytest.fixture
def jp_server_config(store_root: Path, shared_root: Path) -> Config:
    # store_root first: it points SNAPKERNEL_STORE at the test's store before the server reads it.
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}},
            "SnapKernelSettings": {"auto_build": False, "spare_kernels": False, "shared_roots": [str(shared_root)]},
        }
    )


async def api(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    """Call the snapkernel API and parse its JSON answer."""
    response = await jp_fetch("snapkernel", "api", *parts, **kwargs)
    return json.loads(response.body)


async def test_editing_a_setup_cell_of_a_notebook_a_course_snapshot_matched_makes_it_stale(
    jp_fetch: Any, open_session: Any, notebook: Path, shared_root: Path, tmp_path: Path
) -> None:
    """The student's copy of a course notebook: ready from the shared root, then stale (not "none") once edited."""
    (tmp_path / "course").mkdir()
    course_copy = write_notebook(tmp_path / "course" / notebook.name, SETUP_CELLS, marked=1)
    manifest = build_snapshot(course_copy, open_store(shared_root, shared=True))
    ready = await api(jp_fetch, "status", params={"path": notebook.name})
    assert (ready["state"], ready["snapshot"], ready["source"]) == ("ready", manifest.id, "shared"), ready

    edited_cells = [SETUP_CELLS[0], SETUP_CELLS[1] + "\nedited = True"]
    unsaved = {"path": notebook.name, "cells": [{"cell_type": "code", "source": source} for source in edited_cells]}
    unsaved["cells"][1]["metadata"] = {"tags": ["snapshot"]}
    while_editing = await api(jp_fetch, "status", method="POST", body=json.dumps(unsaved))
    write_notebook(notebook, edited_cells, marked=1)
    saved = await api(jp_fetch, "status", params={"path": notebook.name})
    for status in (while_editing, saved):
        assert (status["state"], status["snapshot"], status["source"]) == ("stale", manifest.id, "shared"), status
        assert status["reason"] == "setup cells changed since the snapshot", status

    session: KernelSession = await open_session(notebook)
    report = await api(jp_fetch, "kernels", session.kernel_id)
    assert (report["start"], report["reason"]) == ("cold", "stale: setup cells changed since the snapshot"), report


async def test_snapshots_and_builds_name_notebooks_relative_to_the_root_and_no_server_path(
    jp_fetch: Any, notebook: Path, kernel_store: SnapshotStore, jp_root_dir: Path, tmp_path: Path
) -> None:
    """GET snapshots and GET builds name a notebook by its API path, one outside the root by null, and no answer
    holds a server path (docs/rest-api.md)."""
    (jp_root_dir / "week1").mkdir()
    inside = write_notebook(jp_root_dir / "week1" / "intro.ipynb", ["value = 1"], marked=0)
    outside = write_notebook(tmp_path / "elsewhere.ipynb", ["value = 2"], marked=0)
    built = {
        build_snapshot(inside, kernel_store).id: "week1/intro.ipynb",
        build_snapshot(outside, kernel_store).id: None,
    }
    build = await api(jp_fetch, "builds", method="POST", body=json.dumps({"path": notebook.name}))
    assert build["path"] == notebook.name, build
    deadline = time.monotonic() + 300
    while build["state"] in {"queued", "building"} and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        build = await api(jp_fetch, "builds", build["id"])
    assert build["state"] == "ready", build
    built[build["snapshot"]] = notebook.name

    listing = await api(jp_fetch, "snapshots")
    assert {entry["id"]: entry["notebook"] for entry in listing["snapshots"]} == built, listing
    builds = await api(jp_fetch, "builds")
    answers = json.dumps([listing, builds, build])
    server_paths = {str(tmp_path), str(kernel_store.root), sys.prefix, os.path.realpath(sys.executable)}
    assert [path for path in server_paths if path in answers] == [], answers


async def test_a_restore_reports_one_saving_to_the_toast_and_to_snapshot_status(
    jp_fetch: Any, open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    """The start report (the toast's figures) and `%snapshot status` show the same restore, setup and saved times."""
    manifest = build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    report = await api(jp_fetch, "kernels", session.kernel_id)
    assert (report["start"], report["snapshot"]) == ("restored", manifest.id), report
    kernel_figures = await session.value("[getattr(get_ipython().kernel.start_info, name) for name in "
                                         "('restore_s', 'setup_s', 'saved_s')]")  # fmt: skip
    assert [report["restore_s"], report["setup_s"], report["saved_s"]] == kernel_figures, report
    assert report["setup_s"] == float(manifest.labels["setup_s"])
    assert report["saved_s"] == round(max(report["setup_s"] - report["restore_s"], 0), 1)
    printed = (await session.execute("%snapshot status")).stdout
    assert (
        f"in {report['restore_s']:.2f} s (the setup took {report['setup_s']:.1f} s when built: "
        f"{report['saved_s']:.1f} s saved)"
    ) in printed, printed


def test_ps_names_a_build_a_spare_and_a_restored_kernel_in_use(tmp_path: Path) -> None:
    """/proc/PID/cmdline says what each kernel process is, not `kernelapp --snapshot-build`, for all three."""
    server = LocalServer(tmp_path, {env_names.SPARE_KERNELS: "1"})
    try:
        # The setup waits for a file, so the build kernel can be read while it runs its setup cell.
        release = server.root / "release"
        write_notebook(server.root / "week1.ipynb", [f"import os, time\nwhile not os.path.exists({str(release)!r}):\n"
                                                    "    time.sleep(0.05)\nvalue = 1"], marked=0)  # fmt: skip
        response = server.api("POST", "snapkernel/api/builds", json={"path": "week1.ipynb"})
        assert response.status_code == 202, response.text
        server.wait_until(lambda: server.processes(BUILD_TITLE), 60, "no build kernel named itself")
        [build_kernel] = server.processes(BUILD_TITLE)
        assert command_line(build_kernel.pid) == "snapkernel build of week1.ipynb"
        release.touch()
        build_id = response.json()["id"]
        server.wait_until(lambda: server.api("GET", f"snapkernel/api/builds/{build_id}").json()["state"] == "ready",
                          120, "the build did not finish")  # fmt: skip
        snapshot = server.api("GET", f"snapkernel/api/builds/{build_id}").json()["snapshot"]

        assert server.ready_kernel("week1.ipynb")["start"] == "restored"
        server.wait_until(lambda: server.processes(SPARE_TITLE), 60, "no spare kernel was restored")
        [in_use] = server.processes(RESTORED_TITLE)
        assert command_line(in_use.pid) == f"snapkernel kernel restored from snapshot {snapshot} (week1.ipynb)"
        [spare] = server.processes(SPARE_TITLE)
        assert command_line(spare.pid) == f"snapkernel spare of snapshot {snapshot} (week1.ipynb)"
        # The title is in the image, so ps shows it as soon as CRIU restored the spare: the server lists the
        # spare once its restore call has returned.
        server.wait_until(lambda: listed_spares(server) == [spare.pid], 60, "the API does not list the spare")
        assert server.processes("--snapshot-build") == [], "no kernel looks like a build any more"
    finally:
        server.kill()


def listed_spares(server: LocalServer) -> list[int]:
    """The process ids of the spares that GET snapshots lists."""
    return [entry["pid"] for entry in server.api("GET", "snapkernel/api/snapshots").json()["spares"]]


def command_line(pid: int) -> str:
    """A process's command line as `ps` shows it (its arguments joined by spaces)."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()
