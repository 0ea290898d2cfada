"""Spare kernels in a real server: frozen until claimed, retired when obsolete or idle, within one memory budget."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from queue import Empty
from typing import Any

import psutil
import pytest

from jupyter_snapkernel import env_names
from jupyter_snapkernel.paths import open_store
from tests.helpers import build, snapkernel, write_notebook
from tests.reliability.test_shutdown import RESTORE_HELPER
from tests.servers import LocalServer

WAIT_S = 120.0
QUIET_S = 3.0  # how long a frozen spare is watched for a write it must not make (150 ticks of its thread)
TICK_S = 0.02


def ticking_setup(log: Path) -> list[str]:
    """A setup cell whose thread appends a byte to `log` every TICK_S (opening it for each write only)."""
    return [
        "import os, threading, time\n"
        "def tick():\n"
        "    while True:\n"
        f"        fd = os.open({str(log)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        "        os.write(fd, b'x')\n"
        "        os.close(fd)\n"
        f"        time.sleep({TICK_S})\n"
        "threading.Thread(target=tick, daemon=True).start()"
    ]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start servers with spare kernels on (and the given SNAPKERNEL_* settings); killed after the test."""
    servers: list[LocalServer] = []

    def start(**env: str) -> LocalServer:
        server = LocalServer(tmp_path, {env_names.SPARE_KERNELS: "1", **env})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def open_session(server: LocalServer, notebook: str) -> tuple[str, dict[str, Any]]:
    """Open a notebook session and wait until its kernel answers; return the session's id and how it started.

    Answers are polled with kernel_info requests: a cold kernel beside a build can take longer than the first
    heartbeat, which `wait_for_ready` takes for a dead kernel.
    """
    response = server.start_session(notebook)
    assert response.status_code == 201, response.text + server.log()[-4000:]
    kernel_id = response.json()["kernel"]["id"]
    client = server.client(kernel_id)
    client.start_channels()
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            client.kernel_info()
            try:
                client.get_shell_msg(timeout=1)  # a reply to any of the requests: the kernel answers
                break
            except Empty:
                assert time.monotonic() < deadline, f"the kernel of {notebook} never answered"
    finally:
        client.stop_channels()
    return str(response.json()["id"]), server.api("GET", f"snapkernel/api/kernels/{kernel_id}").json()


def close_session(server: LocalServer, session_id: str) -> None:
    """Close a session: the server shuts its kernel down."""
    response = server.api("DELETE", f"api/sessions/{session_id}")
    assert response.status_code == 204, response.text


def spares(server: LocalServer) -> list[dict[str, Any]]:
    """The live spares the API lists."""
    response = server.api("GET", "snapkernel/api/snapshots")
    assert response.status_code == 200, response.text
    return list(response.json()["spares"])


def restored_trees(server: LocalServer) -> list[psutil.Process]:
    """The namespace inits of the server's restored trees (one per restored kernel, spares included)."""
    return server.processes(RESTORE_HELPER, other_than="unshare")


def tree_snapshots(server: LocalServer) -> list[str]:
    """The snapshot id of each live restored tree, read from its init's command line (`--images …/ID/images`)."""
    found = []
    for init in restored_trees(server):
        with_images = init.cmdline()
        found.append(Path(with_images[with_images.index("--images") + 1]).parent.name)
    return sorted(found)


def spare_snapshots(server: LocalServer) -> list[str]:
    """The snapshot ids of the spares the API lists."""
    return sorted(spare["snapshot"] for spare in spares(server))


def has_spare(server: LocalServer, snapshot: str) -> bool:
    """Whether the API lists a spare of `snapshot`."""
    return snapshot in spare_snapshots(server)


def test_spare_runs_no_setup_thread_until_a_session_claims_it(
    tmp_path: Path, start_server: Callable[..., LocalServer]
) -> None:
    """While only the spare exists, its setup thread writes nothing; once a session claims it, writes resume."""
    log = tmp_path / "ticks.log"
    server = start_server()
    build(write_notebook(server.root / "ticks.ipynb", ticking_setup(log), marked=0), server.store)
    first, _ = open_session(server, "ticks.ipynb")
    server.wait_until(lambda: len(spares(server)) == 1, WAIT_S, "no spare kernel was restored")
    close_session(server, first)
    server.wait_until(lambda: len(restored_trees(server)) == 1, WAIT_S, "the first kernel did not end")
    [spare] = spares(server)
    assert spare["frozen"] is True, spare
    assert spare["notebooks"] == ["ticks.ipynb"] and spare["rss_bytes"] > 0 and spare["idle_s"] >= 0, spare
    assert all(process.status() == psutil.STATUS_STOPPED for process in psutil.Process(spare["pid"]).children())
    size = log.stat().st_size
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:  # a frozen spare never writes: watch for a write that must not come
        assert log.stat().st_size == size, "the spare's setup thread wrote while nobody had claimed it"
        time.sleep(TICK_S)
    open_session(server, "ticks.ipynb")
    assert psutil.pid_exists(spare["pid"]) and spare["pid"] not in [entry["pid"] for entry in spares(server)]
    assert psutil.Process(spare["pid"]).status() != psutil.STATUS_STOPPED
    server.wait_until(lambda: log.stat().st_size > size, WAIT_S, "the claimed kernel's thread did not write")


def test_no_obsolete_spare_outlives_three_setup_edits_or_a_delete(
    start_server: Callable[..., LocalServer],
) -> None:
    """Each edit of the setup (rebuilt by the server) retires the previous spare; DELETE retires the last one."""
    server = start_server(**{env_names.AUTO_BUILD: "1"})
    store = open_store(server.store)
    seen: list[str] = []
    for edit in range(4):
        write_notebook(server.root / "edited.ipynb", [f"value = {edit}"], marked=0)
        assert open_session(server, "edited.ipynb")[1]["start"] == "cold"  # the setup changed: built in the background

        def new_spare() -> bool:
            """Whether the API lists one spare, of a snapshot not seen before, and it is the one restored tree."""
            listed = spare_snapshots(server)
            return len(listed) == 1 and listed[0] not in seen and tree_snapshots(server) == listed

        server.wait_until(new_spare, WAIT_S, f"no spare of edit {edit}, or an obsolete one lives on")
        [current] = tree_snapshots(server)
        assert store.get(current).key != (store.get(seen[-1]).key if seen else None)
        seen.append(current)
    assert server.api("DELETE", f"snapkernel/api/snapshots/{seen[-1]}").status_code == 204
    assert tree_snapshots(server) == [] and spares(server) == []


def test_a_spare_whose_snapshot_rm_deleted_is_retired(start_server: Callable[..., LocalServer]) -> None:
    """`jupyter snapkernel rm` outside the server: the server's next check of its spares retires the spare."""
    server = start_server()
    snapshot = build(write_notebook(server.root / "removed.ipynb", ["value = 1"], marked=0), server.store)
    session, _ = open_session(server, "removed.ipynb")
    server.wait_until(lambda: spare_snapshots(server) == [snapshot], WAIT_S, "no spare kernel was restored")
    close_session(server, session)
    assert snapkernel("rm", snapshot, store=server.store).returncode == 0
    server.wait_until(lambda: restored_trees(server) == [], WAIT_S, "the spare of a deleted snapshot lived on")


def test_a_spare_is_retired_when_its_notebook_has_no_session_for_spare_idle_seconds(
    start_server: Callable[..., LocalServer],
) -> None:
    """spare_idle_seconds after the notebook's last session closed, its spare is gone; while open it stays."""
    server = start_server(**{env_names.SPARE_IDLE_SECONDS: "2"})
    snapshot = build(write_notebook(server.root / "idle.ipynb", ["value = 1"], marked=0), server.store)
    session, _ = open_session(server, "idle.ipynb")
    server.wait_until(lambda: spare_snapshots(server) == [snapshot], WAIT_S, "no spare kernel was restored")
    [spare] = spares(server)
    assert spare["idle_s"] == 0.0  # its notebook has a session open
    close_session(server, session)
    server.wait_until(lambda: restored_trees(server) == [], WAIT_S, "the idle spare was not retired")
    assert "no session of its notebook was open for 2 s" in server.log()


def test_spares_of_ten_notebooks_keep_to_a_budget_of_two_least_recently_used_first(
    tmp_path: Path, start_server: Callable[..., LocalServer]
) -> None:
    """A budget of two spares: never more than two live, and the one whose notebook was used least recently goes
    first (not the oldest: notebook 0's spare is the oldest, but its session is still open)."""
    store_path = tmp_path / "store"
    notebooks = [f"nb{index}.ipynb" for index in range(10)]
    root = tmp_path / "notebooks"
    root.mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:
        ids = list(
            pool.map(
                lambda index: build(write_notebook(root / notebooks[index], [f"value = {index}"], 0), store_path),
                range(10),
            )
        )
    sizes = [open_store(store_path).get(snapshot).rss_bytes for snapshot in ids]
    budget = 2 * max(sizes) + min(sizes) // 2
    assert 3 * min(sizes) > budget, sizes  # two spares fit, three do not
    server = start_server(**{env_names.SPARE_MEMORY_BYTES: str(budget)})

    def at_most_two() -> None:
        assert len(spares(server)) <= 2

    kept_open, _ = open_session(server, notebooks[0])
    server.wait_until(lambda: spare_snapshots(server) == [ids[0]], WAIT_S, "no spare for notebook 0")
    closed, _ = open_session(server, notebooks[1])
    server.wait_until(lambda: spare_snapshots(server) == sorted(ids[:2]), WAIT_S, "no spare for notebook 1")
    close_session(server, closed)
    third, _ = open_session(server, notebooks[2])
    server.wait_until(lambda: ids[2] in spare_snapshots(server), WAIT_S, "no spare for notebook 2")
    # Least recently used: notebook 1 (closed) goes; first in, first out would have retired notebook 0's.
    assert spare_snapshots(server) == sorted([ids[0], ids[2]])
    close_session(server, kept_open)
    close_session(server, third)
    for index in range(3, 10):
        session, _ = open_session(server, notebooks[index])
        server.wait_until(partial(has_spare, server, ids[index]), WAIT_S, f"no spare for notebook {index}")
        at_most_two()
        close_session(server, session)
    server.wait_until(lambda: len(restored_trees(server)) <= 2, WAIT_S, "kernels of closed sessions lived on")
    assert len(tree_snapshots(server)) == 2 and set(tree_snapshots(server)) == set(spare_snapshots(server))
    assert sum(spare["budget_bytes"] for spare in spares(server)) <= budget
