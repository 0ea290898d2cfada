"""Builds that are killed, time out, run out of disk or run twice at once: nothing is left behind or lost."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from jupyter_snapkernel.paths import open_store
from snapkernel_engine import SnapshotNotFound
from snapkernel_engine.store import MARKER
from tests.helpers import JUPYTER, build, run_json, snapkernel, wait_until, write_notebook
from tests.servers import BUILD_KERNEL, LocalServer

SLOW_SETUP = ["import time\ntime.sleep(60)"]
BIG_SETUP = ["import numpy as np\nbig = np.ones(60_000_000)  # 480 MB to dump"]


def written_pages(staging: Path) -> int:
    """How many bytes of memory pages a dump has written into the store's staging folder so far."""
    written = 0
    for path in staging.rglob("pages-*.img"):
        with contextlib.suppress(FileNotFoundError):  # the dump may end and move its folder meanwhile
            written += path.stat().st_size
    return written


def start_build(notebook: Path, store: Path, *args: str) -> subprocess.Popen[str]:
    """Start `jupyter snapkernel build` in the background, with its progress lines on stderr."""
    return subprocess.Popen(
        [str(JUPYTER), "snapkernel", "--store", str(store), "build", str(notebook), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(stream: object, text: str, timeout: float = 120) -> None:
    """Read a stream until a line holds `text`."""
    deadline = time.monotonic() + timeout
    for line in stream:  # type: ignore[attr-defined]
        if text in line:
            return
        assert time.monotonic() < deadline, f"no line with {text!r}"
    raise AssertionError(f"the stream ended before a line with {text!r}")


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below `pid`."""
    return psutil.Process(pid).children(recursive=True)


def assert_all_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    """Each process has exited and been reaped (no zombie) within `timeout`."""
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    left = [process for process in alive if process.is_running() and process.status() != psutil.STATUS_ZOMBIE]
    zombies = [process for process in alive if process.is_running() and process.status() == psutil.STATUS_ZOMBIE]
    assert not left and not zombies, f"left running: {left}, zombies: {zombies}"


def test_sigkill_of_a_build_in_its_setup_cell_leaves_no_kernel(tmp_path: Path) -> None:
    """The build kernel dies with the build that started it, even when that is SIGKILLed."""
    notebook = write_notebook(tmp_path / "slow.ipynb", SLOW_SETUP, marked=0)
    builder = start_build(notebook, tmp_path / "store")
    wait_for_line(builder.stderr, "running setup cell 1/1")
    tree = descendants(builder.pid)
    assert any(marker in " ".join(process.cmdline()) for process in tree for marker in BUILD_KERNEL)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert_all_gone(tree)


@pytest.mark.parametrize("tidied_by", ["gc", "server start"])
def test_sigkill_in_the_middle_of_a_dump_leaves_nothing_after_gc_or_a_server_start(
    tmp_path: Path, tidied_by: str
) -> None:
    """The half-written snapshot of a killed dump is removed by the next gc or server start, whatever the quota."""
    notebook = write_notebook(tmp_path / "big.ipynb", BIG_SETUP, marked=0)
    store = tmp_path / "store"
    builder = start_build(notebook, store)
    wait_for_line(builder.stderr, "checkpointing the kernel")
    staging = store / "staging"
    wait_until(lambda: written_pages(staging), 60, "CRIU wrote no memory pages", interval_s=0.01)
    tree = descendants(builder.pid)
    builder.send_signal(signal.SIGKILL)
    builder.wait()
    assert_all_gone(tree)
    leftover = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
    assert leftover > 0, "the killed dump had written part of a snapshot"
    if tidied_by == "gc":
        collected = snapkernel("gc", store=store)
        assert collected.returncode == 0, collected.stderr
    else:
        server = LocalServer(tmp_path, {})
        try:
            server.wait_until(lambda: not any(staging.iterdir()), 30, "the server did not remove the leftover")
            server.terminate()
        finally:
            server.kill()
    assert list(staging.iterdir()) == [] and open_store(store).list() == []


def test_a_rebuild_replaces_the_snapshot_and_lets_a_restore_in_progress_finish(tmp_path: Path) -> None:
    """One snapshot per key: the old one goes once no restore is using it, and restores of it never fail."""
    notebook = write_notebook(tmp_path / "analysis.ipynb", ["value = 21"], marked=0, after=["print(value)"])
    store_root = tmp_path / "store"
    old = build(notebook, store_root)
    store = open_store(store_root)
    failures: list[BaseException] = []
    restored = [0]
    stop = threading.Event()

    def restore_old_until_it_is_gone() -> None:
        while not stop.is_set():
            try:
                tree = store.restore_snapshot(old, pipes={})
            except SnapshotNotFound:
                return  # deleted between restores: no restore of it was running
            except BaseException as error:
                failures.append(error)
                return
            restored[0] += 1
            tree.kill()

    restorer = threading.Thread(target=restore_old_until_it_is_gone)
    restorer.start()
    try:
        new = build(notebook, store_root)
    finally:
        stop.set()
        restorer.join()
    assert not failures, failures
    assert restored[0] > 0
    store.clean_up()
    assert [manifest.id for manifest in store.list()] == [new]
    assert not (store_root / "snapshots" / old).exists()
    _, summary, _ = run_json(notebook, store_root)
    assert summary["start"] == "restored" and summary["snapshot"] == new, summary


def test_two_builds_of_one_notebook_at_once_publish_one_snapshot(tmp_path: Path) -> None:
    """The second build waits for the first one and reports its snapshot instead of failing."""
    notebook = write_notebook(tmp_path / "analysis.ipynb", ["import time\ntime.sleep(3)\nvalue = 21"], marked=0)
    store = tmp_path / "store"
    first = start_build(notebook, store)
    wait_for_line(first.stderr, "running setup cell 1/1")
    second = start_build(notebook, store)
    outputs = [process.communicate(timeout=120) for process in (first, second)]
    assert [process.returncode for process in (first, second)] == [0, 0], outputs
    ids = {stdout.split()[1].rstrip(":") for stdout, _ in outputs}
    assert len(ids) == 1 and [manifest.id for manifest in open_store(store).list()] == list(ids)
    assert "waiting for the build already running" in outputs[1][1]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)


def test_a_build_on_a_full_disk_says_so_in_one_line_and_leaves_nothing(tmp_path: Path, small_disk: Path) -> None:
    """No traceback, the reason and what to do, and the disk as free as before the build."""
    notebook = write_notebook(tmp_path / "analysis.ipynb", ["import numpy as np\nvalue = np.ones(10_000_000)"], 0)
    built = snapkernel("build", "--quiet", str(notebook), store=small_disk / "store")
    assert built.returncode == 1 and "Traceback" not in built.stderr, built.stderr
    [line] = built.stderr.strip().splitlines()
    assert line.startswith("error: could not write the snapshot into") and "No space left on device" in line
    assert "free space there (`jupyter snapkernel gc`)" in line
    used = [
        path
        for path in small_disk.rglob("*")
        if path.is_file() and path.suffix != ".lock" and path.name != MARKER and path.stat().st_size
    ]
    assert [path.parent.name for path in used] == ["builds"], used  # only the failed build's record


def test_a_build_timeout_names_the_cell_and_the_limit(tmp_path: Path) -> None:
    """The timeout message says which setup cell was running and what the limit was; no kernel stays."""
    notebook = write_notebook(tmp_path / "slow.ipynb", ["value = 1", *SLOW_SETUP], marked=1)
    started = time.monotonic()
    built = snapkernel("build", "--quiet", "--timeout", "3", str(notebook), store=tmp_path / "store")
    assert time.monotonic() - started < 30
    assert built.returncode == 1 and "Traceback" not in built.stderr, built.stderr
    assert built.stderr.strip().splitlines() == [
        "error: setup cell 2 of slow.ipynb was still running when the build's limit of 3 s ran out: raise the "
        "limit (SnapKernelSettings.build_timeout, or build --timeout) or make it faster"
    ]
    assert not build_kernels_in(tmp_path)


def build_kernels_in(folder: Path) -> list[psutil.Process]:
    """Build kernels running in `folder` (a build kernel's working directory is its notebook's folder)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(marker in " ".join(process.info["cmdline"] or []) for marker in BUILD_KERNEL):
            with contextlib.suppress(psutil.Error):
                if Path(process.cwd()) == folder:
                    found.append(process)
    return found


def test_sigkill_of_the_server_during_a_build_leaves_no_kernel(tmp_path: Path) -> None:
    """A server killed while its build runs a setup cell takes the build kernel with it."""
    server = LocalServer(tmp_path, {})
    try:
        write_notebook(server.root / "slow.ipynb", SLOW_SETUP, marked=0)
        response = server.api("POST", "snapkernel/api/builds", json={"path": "slow.ipynb"})
        assert response.status_code == 202, response.text
        server.wait_until(lambda: server.processes(*BUILD_KERNEL), 60, "the build kernel did not start")
        tree = descendants(server.process.pid)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
        assert_all_gone(tree)
    finally:
        server.kill()


def test_two_servers_building_one_notebook_at_once_both_report_one_snapshot(tmp_path: Path) -> None:
    """Two servers on one store: the second build waits for the first and reports its snapshot as ready."""
    store = tmp_path / "store"
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    servers = [LocalServer(tmp_path / name, {"SNAPKERNEL_STORE": str(store)}) for name in ("first", "second")]
    first = servers[0]
    try:
        builds = []
        for server in servers:
            write_notebook(server.root / "twice.ipynb", ["import time\ntime.sleep(3)\nvalue = 21"], marked=0)
            response = server.api("POST", "snapkernel/api/builds", json={"path": "twice.ipynb"})
            assert response.status_code == 202, response.text
            builds.append(response.json()["id"])
            first.wait_until(lambda: first.processes(*BUILD_KERNEL), 60, "the first build did not start")
        finished = []
        for server, build_id in zip(servers, builds, strict=True):
            answer: dict[str, Any] = {}

            def done(server: LocalServer = server, build_id: str = build_id, answer: dict[str, Any] = answer) -> bool:
                answer.update(server.api("GET", f"snapkernel/api/builds/{build_id}").json())
                return answer["state"] not in ("queued", "building")

            server.wait_until(done, 120, "a build did not finish")
            finished.append(answer)
        assert [build["state"] for build in finished] == ["ready", "ready"], finished
        assert finished[0]["snapshot"] == finished[1]["snapshot"]
        assert any("waiting for the build already running" in line for line in finished[1]["log"]), finished[1]
        assert [manifest.id for manifest in open_store(store).list()] == [finished[0]["snapshot"]]
        for server in servers:
            server.terminate()
    finally:
        for server in servers:
            server.kill()
