"""Builds are bounded (issue 17, item 6): one queue per server, 429 past it, and a quota smaller than a snapshot."""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import requests

from jupyter_snapkernel.notebook.state import notebook_file_state
from jupyter_snapkernel.paths import open_store
from tests.helpers import write_notebook
from tests.servers import BUILD_KERNEL, LocalServer

ACTIVE = ("queued", "building")


def build_kernels(server: LocalServer) -> list[psutil.Process]:
    """The server's build kernels: one per build (a namespace wrapper and the kernel it runs count once)."""
    parents = {}
    for process in server.processes(*BUILD_KERNEL):
        with contextlib.suppress(psutil.Error):  # it has just exited
            parents[process] = process.ppid()
    pids = {process.pid for process in parents}
    return [process for process, parent in parents.items() if parent not in pids]


def builds(server: LocalServer) -> list[dict[str, Any]]:
    """The server's builds, as GET builds lists them."""
    response = server.api("GET", "snapkernel/api/builds")
    assert response.status_code == 200, response.text
    return response.json()["builds"]


def snapshot_status(server: LocalServer, notebook: str) -> str:
    """What `%snapshot status` prints in a new session of the notebook."""
    response = server.start_session(notebook)
    assert response.status_code == 201, response.text
    client = server.client(response.json()["kernel"]["id"])
    client.hb_channel.time_to_dead = 10.0
    client.start_channels()
    printed: list[str] = []

    def keep(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            printed.append(message["content"]["text"])

    try:
        client.wait_for_ready(timeout=60)
        reply = client.execute_interactive("%snapshot status", output_hook=keep, timeout=60)
        assert reply["content"]["status"] == "ok", reply
    finally:
        client.stop_channels()
    return "".join(printed)


def test_40_build_requests_at_once_run_at_most_max_concurrent_builds_and_queue_or_refuse_the_rest(
    tmp_path: Path,
) -> None:
    """40 notebooks asked at once: never more build kernels than max_concurrent_builds, the rest queued or 429."""
    server = LocalServer(tmp_path, {"SNAPKERNEL_MAX_CONCURRENT_BUILDS": "2", "SNAPKERNEL_MAX_QUEUED_BUILDS": "8"})
    try:
        for index in range(40):
            write_notebook(server.root / f"nb{index}.ipynb", [f"value = {index}"], marked=0)

        def ask(index: int) -> requests.Response:
            return server.api("POST", "snapkernel/api/builds", json={"path": f"nb{index}.ipynb"})

        with ThreadPoolExecutor(max_workers=40) as pool:
            answers = list(pool.map(ask, range(40)))
        assert {answer.status_code for answer in answers} <= {202, 429}, [answer.text for answer in answers]
        accepted = [answer.json() for answer in answers if answer.status_code == 202]
        refused = [answer.json()["message"] for answer in answers if answer.status_code == 429]
        assert len(accepted) >= 2 + 8 and refused, (len(accepted), refused)
        assert all("SnapKernelSettings.max_queued_builds" in message and "\n" not in message for message in refused)
        queued = [build for build in accepted if build["state"] == "queued"]
        assert queued and all(isinstance(build["queue_ahead"], int) for build in queued), accepted

        most_at_once = 0
        seen_queued = {"REST status": False, "the state a kernel reads": False}
        deadline = time.monotonic() + 300
        while any(build["state"] in ACTIVE for build in builds(server)):
            most_at_once = max(most_at_once, len(build_kernels(server)))
            waiting = [build for build in builds(server) if build["state"] == "queued"]
            if waiting:
                last = server.root / waiting[-1]["path"]
                status = server.api("GET", "snapkernel/api/status", params={"path": last.name}).json()
                seen_queued["REST status"] |= status["state"] == "queued" and status["queue_ahead"] >= 0
                state = notebook_file_state([open_store(server.store)], last)  # as `%snapshot status` decides
                seen_queued["the state a kernel reads"] |= state.state == "queued" and state.queue_ahead is not None
            assert time.monotonic() < deadline, builds(server)
            time.sleep(0.05)
        assert 1 <= most_at_once <= 2, most_at_once
        assert all(seen_queued.values()), seen_queued
        finished = {build["id"]: build for build in builds(server)}
        assert [finished[build["id"]]["state"] for build in accepted] == ["ready"] * len(accepted), finished
        server.terminate()
    finally:
        server.kill()


def test_a_quota_smaller_than_one_snapshot_builds_once_and_the_state_names_the_quota(tmp_path: Path) -> None:
    """Three cold starts with automatic builds: one build, deleted at once, then a failed state naming the quota;
    a server without the quota builds it again."""
    server = LocalServer(tmp_path, {"SNAPKERNEL_AUTO_BUILD": "1", "SNAPKERNEL_QUOTA_BYTES": "1000000"})
    try:
        write_notebook(server.root / "big.ipynb", ["value = 21"], marked=0)
        reasons = []
        for _ in range(3):
            started = server.ready_kernel("big.ipynb")
            assert started["start"] == "cold", started
            reasons.append(started["reason"])
            server.wait_until(
                lambda: all(build["state"] not in ACTIVE for build in builds(server)), 120, "a build did not finish"
            )
        [build] = builds(server)
        assert build["state"] == "failed", build
        assert "is larger than the quota (1.0 MB) (SnapKernelSettings.quota_bytes)" in build["error"], build
        status = server.api("GET", "snapkernel/api/status", params={"path": "big.ipynb"}).json()
        assert status["state"] == "failed" and "SnapKernelSettings.quota_bytes" in status["reason"], status
        assert reasons[0] == "no snapshot yet", reasons
        assert all("is larger than the quota" in reason for reason in reasons[1:]), reasons
        assert not list((server.store / "snapshots").iterdir()), "the snapshot over the quota was deleted"
        server.terminate()
    finally:
        server.kill()
    # Without the quota the same cells build again, and the next start is restored.
    server = LocalServer(tmp_path, {"SNAPKERNEL_AUTO_BUILD": "1"})
    try:
        assert server.ready_kernel("big.ipynb")["reason"] == "no snapshot yet"
        server.wait_until(
            lambda: [build["state"] for build in builds(server)] == ["ready"], 120, "the build did not publish"
        )
        assert server.ready_kernel("big.ipynb")["start"] == "restored"
        server.terminate()
    finally:
        server.kill()


def test_builds_queued_when_the_server_stops_are_dropped_and_never_run(tmp_path: Path) -> None:
    """Two builds wait behind one in a 60 s cell (a request for a queued one joins it; `%snapshot status` says
    queued): at SIGTERM the server exits, and no build kernel, snapshot or record stays."""
    server = LocalServer(tmp_path, {})
    try:
        for name in ("slow", "second", "third"):
            setup = "import time\ntime.sleep(60)" if name == "slow" else f"name = {name!r}"
            write_notebook(server.root / f"{name}.ipynb", [setup], marked=0)
            response = server.api("POST", "snapkernel/api/builds", json={"path": f"{name}.ipynb"})
            assert response.status_code == 202, response.text
        assert [build["state"] for build in builds(server)] == ["building", "queued", "queued"]
        assert [build["queue_ahead"] for build in builds(server)] == [None, 0, 1]
        again = server.api("POST", "snapkernel/api/builds", json={"path": "third.ipynb"}).json()
        assert again["id"] == builds(server)[2]["id"] and again["state"] == "queued", "a second request joins"
        server.wait_until(lambda: build_kernels(server), 60, "the first build kernel did not start")
        server.wait_until(
            lambda: (server.store / "builds" / f"queue-{server.process.pid}.json").exists(), 30, "no record"
        )
        assert "notebook snapshot: queued (1 ahead)" in snapshot_status(server, "third.ipynb")
        kernels = build_kernels(server)
        exited, alive = server.terminate()
        assert exited < 10 and alive == [], (exited, alive, server.log()[-4000:])
        assert not any(process.is_running() for process in kernels)
        assert not list((server.store / "snapshots").iterdir()), "no queued build ran"
        assert [path.name for path in (server.store / "builds").iterdir() if path.suffix == ".json"] == []
    finally:
        server.kill()
