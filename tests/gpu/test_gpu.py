"""CUDA tensors through a real checkpoint and restore: runs only where a GPU and a driver >= 570 exist."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from snapkernel_engine import SnapshotStore
from snapkernel_engine.cuda import system_driver

pytestmark = pytest.mark.skipif(
    system_driver() is None,
    reason="needs an NVIDIA GPU with the CUDA checkpoint API (driver >= 570); this machine has none",
)

HOLDER = (
    "import sys, torch; torch.manual_seed(7); t = torch.randn(16 * 1024 * 1024, device='cuda');"
    "print(float(t.double().sum()), flush=True);"
    "[print(float(t.double().sum()), flush=True) for _ in sys.stdin]"
)


def test_cuda_tensors_survive_checkpoint_and_restore(store: SnapshotStore) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        checksum = holder.stdout.readline().strip()
        manifest = store.take_snapshot(holder.pid, "cuda", pipes={"stdin": 0, "stdout": 1})
        assert manifest.cuda_pids == [holder.pid]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    tree = store.restore_snapshot(manifest.id, key="cuda", pipes={"stdin": stdin_read, "stdout": stdout_write})
    os.close(stdin_read)
    os.close(stdout_write)
    try:
        with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
            to_tree.write("sum\n")
            to_tree.flush()
            assert from_tree.readline().strip() == checksum
    finally:
        tree.kill()
