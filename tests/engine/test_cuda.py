"""GPU state around checkpoints and restores, with real CRIU and a double for the CUDA driver calls."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapkernel_engine import CheckpointError, RestoreError, SnapshotStore, process
from tests.helpers import Conversation, Workload, pipes_for_restore

from .cuda_double import RUNNING, CudaDriverDouble

KEY = "gpu-key"
PIPES = {"stdin": 0, "stdout": 1}


@pytest.fixture
def driver() -> CudaDriverDouble:
    return CudaDriverDouble()


def restore(store: SnapshotStore, snapshot_id: str, driver: CudaDriverDouble, defer_gpu: bool = False) -> Conversation:
    handed, to_tree, from_tree, to_close = pipes_for_restore()
    try:
        tree = store.restore_snapshot(snapshot_id, key=KEY, pipes=handed, cuda_driver=driver, defer_gpu=defer_gpu)
    finally:
        for fd in to_close:
            os.close(fd)
    return Conversation(tree, to_tree, from_tree)


def test_gpu_state_goes_to_host_memory_for_the_dump_and_back_after_each_restore(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    pid = workload.pid
    assert driver.calls == [("lock", pid), ("checkpoint", pid), ("restore", pid), ("unlock", pid)]
    assert driver.states[pid] == RUNNING, "the original runs on"
    assert manifest.cuda_pids == [pid]

    driver.calls.clear()
    conversation = restore(store, manifest.id, driver)
    try:
        host_pid = conversation.tree.pid
        assert driver.calls == [("restore", host_pid), ("unlock", host_pid)]
        assert driver.states[host_pid] == RUNNING
        assert conversation.ask("report")["checksum"] == workload.checksum
    finally:
        conversation.tree.kill()


def test_lock_timeout_fails_the_checkpoint_and_leaves_the_process_running(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    driver.failures["lock"] = "CUDA_ERROR_TIMEOUT"
    with pytest.raises(CheckpointError, match=r"GPU state of process \d+ .*CUDA_ERROR_TIMEOUT"):
        store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    assert driver.states[workload.pid] == RUNNING
    assert workload.process.poll() is None
    assert store.list() == [] and list(store.staging_dir.iterdir()) == []


def test_a_checkpoint_error_puts_locked_processes_back(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    driver.failures["checkpoint"] = "CUDA_ERROR_OUT_OF_MEMORY"
    with pytest.raises(CheckpointError, match="CUDA_ERROR_OUT_OF_MEMORY"):
        store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    assert driver.calls[-1] == ("unlock", workload.pid)
    assert driver.states[workload.pid] == RUNNING


def test_criu_refusal_after_the_gpu_checkpoint_puts_gpu_state_back(
    store: SnapshotStore, driver: CudaDriverDouble
) -> None:
    # A pidfd of a process outside the tree (this test): CRIU itself refuses it, after the GPU checkpoint.
    script = "import os, sys; held = os.pidfd_open(os.getppid()); print('holding', flush=True); sys.stdin.read()"
    client = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        client.stdout.readline()
        driver.holds_cuda(client.pid)
        with pytest.raises(CheckpointError, match="CRIU refused"):
            store.take_snapshot(client.pid, KEY, cuda_driver=driver)
        assert [call for call, _ in driver.calls] == ["lock", "checkpoint", "restore", "unlock"]
        assert driver.states[client.pid] == RUNNING
        assert client.poll() is None
    finally:
        client.kill()
        client.wait()


def test_out_of_memory_at_restore_kills_the_restored_tree(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    driver.failures["restore"] = "CUDA_ERROR_OUT_OF_MEMORY"
    before = set(process.children(os.getpid()))
    with pytest.raises(RestoreError, match=r"could not put the GPU state back on the GPU: .*CUDA_ERROR_OUT_OF_MEMORY"):
        restore(store, manifest.id, driver)
    restored_pids = [pid for pid, _ in driver.calls if pid != workload.pid]
    assert restored_pids and not any(Path(f"/proc/{pid}").exists() for pid in restored_pids)
    assert set(process.children(os.getpid())) <= before, "no helper or zombie left"
    assert list(store.work_dir.iterdir()) == []


def test_excluded_gpu_state_refuses_a_process_that_initialised_cuda(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    with pytest.raises(CheckpointError, match="has initialised CUDA, but GPU state is excluded"):
        store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver, gpu_state=False)
    assert driver.calls == []
    assert store.list() == []


def test_a_dump_that_ends_the_process_does_not_resume_its_gpu_state(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver, leave_running=False)
    assert [call for call, _ in driver.calls] == ["lock", "checkpoint"]


def test_processes_without_cuda_state_need_no_driver_calls(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    assert manifest.cuda_pids == [] and driver.calls == []


def test_a_deferred_restore_keeps_gpu_state_in_host_memory_until_it_is_put_back(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    """A spare's restore: no CUDA call at the restore (the tree holds no GPU memory); restore and unlock when
    the state is put back, once."""
    driver.holds_cuda(workload.pid)
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    driver.calls.clear()
    conversation = restore(store, manifest.id, driver, defer_gpu=True)
    tree = conversation.tree
    try:
        assert driver.calls == [], "the GPU state stays in host memory"
        assert tree.gpu_state_pending
        assert conversation.ask("report")["checksum"] == workload.checksum
        tree.put_gpu_state_back()
        assert driver.calls == [("restore", tree.pid), ("unlock", tree.pid)]
        assert driver.states[tree.pid] == RUNNING and not tree.gpu_state_pending
        tree.put_gpu_state_back()
        assert len(driver.calls) == 2, "put back once"
    finally:
        tree.kill()


def test_a_deferred_put_back_that_fails_kills_the_restored_tree(
    store: SnapshotStore, workload: Workload, driver: CudaDriverDouble
) -> None:
    driver.holds_cuda(workload.pid)
    manifest = store.take_snapshot(workload.pid, KEY, pipes=PIPES, cuda_driver=driver)
    conversation = restore(store, manifest.id, driver, defer_gpu=True)
    tree = conversation.tree
    members = [tree.init_pid, *tree.members()]
    driver.failures["restore"] = "CUDA_ERROR_OUT_OF_MEMORY"
    with pytest.raises(RestoreError, match=r"could not put the GPU state back on the GPU: .*CUDA_ERROR_OUT_OF_MEMORY"):
        tree.put_gpu_state_back()
    assert tree.ended()
    assert not any(Path(f"/proc/{pid}").exists() for pid in members), "no process or zombie left"
