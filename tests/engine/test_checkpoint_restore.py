"""Checkpoint a real process tree with CRIU and restore it, several times at once."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from snapkernel_engine import CheckpointError, RestoredTree, SnapshotStore, process
from snapkernel_engine.restore import lazy_restore_supported
from tests.helpers import Conversation, Workload, pipes_for_restore

KEY = "test-key"
PIPES = {"stdin": 0, "stdout": 1}


def image_hashes(store: SnapshotStore, snapshot_id: str) -> dict[str, str]:
    images = store.snapshots_dir / snapshot_id / "images"
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(images.iterdir())}


def restore_with_pipes(store: SnapshotStore, snapshot_id: str, **options: bool) -> Conversation:
    handed, to_tree, from_tree, to_close = pipes_for_restore()
    try:
        tree = store.restore_snapshot(snapshot_id, key=KEY, pipes=handed, **options)
    finally:
        for fd in to_close:
            os.close(fd)
    return Conversation(tree, to_tree, from_tree)


def wait_until_stopped(tree: RestoredTree) -> None:
    """Wait until every restored process is stopped: CRIU's detach delivers the SIGSTOP as it lets go."""
    deadline = time.monotonic() + 10
    while not tree.stopped():
        assert time.monotonic() < deadline, f"{tree} was not left stopped"
        time.sleep(0.01)


def namespace_members_gone(tree_pids: list[int]) -> bool:
    return not any(process.is_alive(pid) or Path(f"/proc/{pid}").exists() for pid in tree_pids)


def test_four_concurrent_restores_have_intact_data_threads_and_children(
    store: SnapshotStore, workload: Workload
) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    assert manifest.rss_bytes >= 100 * 2**20
    assert workload.process.poll() is None, "the original keeps running after the dump"
    before = image_hashes(store, manifest.id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        conversations = list(pool.map(lambda _: restore_with_pipes(store, manifest.id), range(4)))
    try:
        reports = [conversation.ask("report") for conversation in conversations]
        for report in reports:
            assert report["checksum"] == workload.checksum
            assert report["thread_alive"] is True
            assert report["child_alive"] is True
            assert report["pid"] == manifest.pid == report["proc_self"]
        host_pids = {conversation.tree.pid for conversation in conversations}
        assert len(host_pids) == 4
        assert workload.pid not in host_pids
        for conversation in conversations:
            assert len(conversation.tree.members()) == 2, "root and its child"
    finally:
        for conversation in conversations:
            conversation.tree.kill()
    assert image_hashes(store, manifest.id) == before


def test_kill_leaves_no_process_or_zombie(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id)
    assert conversation.ask("report")["child_alive"] is True
    members = conversation.tree.members()
    everyone = [conversation.tree.init_pid, *members]
    assert len(members) == 2

    conversation.tree.kill()

    assert conversation.tree.returncode == -9
    assert namespace_members_gone(everyone)
    children_left = process.children(os.getpid())
    assert not any(pid in everyone for pid in children_left)


def test_restored_tree_ends_when_root_exits(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id)
    everyone = [conversation.tree.init_pid, *conversation.tree.members()]
    conversation.to_tree.write("exit\n")
    conversation.to_tree.flush()
    assert conversation.tree.wait(timeout=30) == 0
    assert namespace_members_gone(everyone)


def test_send_signal_reaches_every_member(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id)
    members = conversation.tree.members()
    conversation.tree.terminate()
    assert conversation.tree.wait(timeout=30) == 128 + 15
    assert namespace_members_gone(members)


def test_dump_refused_for_established_tcp_connection(store: SnapshotStore) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import socket, sys; s = socket.create_connection(('127.0.0.1', {port})); "
            "print('connected', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _accepted, _ = listener.accept()
        assert client.stdout.readline().strip() == "connected"
        with pytest.raises(CheckpointError) as caught:
            store.take_snapshot(client.pid, KEY)
        message = str(caught.value)
        assert message.startswith(f"process {client.pid} has a TCP connection to 127.0.0.1:{port} (from "), message
        assert "a restore cannot resume a connection" in message and "after_restore" in message, message
        assert store.list() == []
        assert list(store.staging_dir.iterdir()) == []
        assert client.poll() is None, "the process keeps running"
    finally:
        client.kill()
        client.wait()
        listener.close()


def test_dump_refuses_a_process_that_is_not_a_session_leader(store: SnapshotStore) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        with pytest.raises(CheckpointError, match="not a session leader"):
            store.take_snapshot(sleeper.pid, KEY)
        assert store.list() == []
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dump_without_leave_running_stops_the_original(store: SnapshotStore, workload: Workload) -> None:
    store.take_snapshot(workload.pid, KEY, pipes=PIPES, leave_running=False)
    deadline = time.monotonic() + 10
    while workload.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workload.process.poll() is not None


def test_lazy_restore_resumes_before_memory_is_loaded(store: SnapshotStore, workload: Workload) -> None:
    if not lazy_restore_supported():
        pytest.skip("this kernel lacks non-cooperative userfaultfd (criu check --feature uffd-noncoop)")
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id, lazy=True)
    tree = conversation.tree
    try:
        report = conversation.ask("report")
        assert report["checksum"] == workload.checksum
        assert report["thread_alive"] is True and report["child_alive"] is True
        assert tree.pages_loaded.wait(timeout=60)
        assert conversation.ask("report")["checksum"] == workload.checksum
    finally:
        tree.kill()


def test_restore_into_its_own_network_namespace(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id, own_network=True)
    tree = conversation.tree
    try:
        assert os.readlink(f"/proc/{tree.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        assert conversation.ask("report")["checksum"] == workload.checksum
    finally:
        tree.kill()


def test_tree_restored_stopped_runs_nothing_until_resumed(store: SnapshotStore, workload: Workload) -> None:
    """A tree restored stopped: every thread of every process is stopped; resume() continues them all."""
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id, stopped=True)
    tree = conversation.tree
    try:
        members = tree.members()
        assert len(members) == 2, "root and its child"
        wait_until_stopped(tree)
        assert all(process.is_stopped(member) for member in members)
        conversation.to_tree.write("report\n")  # waits in the pipe while the tree is stopped
        conversation.to_tree.flush()
        tree.resume()
        report = json.loads(conversation.from_tree.readline())
        assert report["checksum"] == workload.checksum
        assert report["thread_alive"] is True and report["child_alive"] is True
        assert not any(process.is_stopped(member) for member in tree.members())
    finally:
        tree.kill()


def test_lazy_restore_of_a_stopped_tree_loads_its_memory_and_resumes(store: SnapshotStore, workload: Workload) -> None:
    """Restored lazily and stopped: the tree stays stopped while its pages load, then resumes intact."""
    if not lazy_restore_supported():
        pytest.skip("this kernel lacks non-cooperative userfaultfd (criu check --feature uffd-noncoop)")
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id, lazy=True, stopped=True)
    tree = conversation.tree
    try:
        wait_until_stopped(tree)
        conversation.to_tree.write("report\n")
        conversation.to_tree.flush()
        tree.resume()
        report = json.loads(conversation.from_tree.readline())
        assert report["checksum"] == workload.checksum and report["thread_alive"] is True
        assert tree.pages_loaded.wait(timeout=60)
    finally:
        tree.kill()


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_pages_read_by_several_threads_restore_intact_data_and_leave_no_helper_thread(
    store: SnapshotStore, workload: Workload, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    # The patched restorer splits 100 MB into shares of at least 16 MiB: 8 asked for gives 6 threads.
    monkeypatch.setenv("CRIU_PAGE_READ_THREADS", str(threads))
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES)
    conversation = restore_with_pipes(store, manifest.id)
    try:
        report = conversation.ask("report")
        assert report["checksum"] == workload.checksum
        assert report["thread_alive"] is True and report["child_alive"] is True
        assert report["pid"] == manifest.pid
        tasks = sorted(int(name) for name in os.listdir(f"/proc/{conversation.tree.pid}/task"))
        assert len(tasks) == 2, f"the root and its ticking thread only, no page reader left: {tasks}"
    finally:
        conversation.tree.kill()
