"""Restores fault dense memory in as huge pages, and leave sparse memory as small as it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import SnapshotStore
from engine.criu import find_criu

HOLDER = """
import hashlib, mmap, sys
dense = bytearray(range(256)) * (64 << 12)  # 64 MiB, every page written
sparse = mmap.mmap(-1, 256 << 20)  # 256 MiB reserved, one byte written every 2 MiB
for offset in range(0, 256 << 20, 2 << 20):
    sparse[offset] = 1
print("ready", flush=True)
sys.stdin.readline()
print(hashlib.sha256(bytes(dense) + bytes(sparse[::4096])).hexdigest(), flush=True)
"""


def thp_mode() -> str:
    """The system's transparent huge page mode: always, madvise or never."""
    text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    return text.split("[")[1].split("]")[0]


def memory_kb(pid: int, field: str) -> int:
    """One field of a process's /proc/PID/smaps_rollup, in kB."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in smaps_rollup")


def test_dense_memory_is_restored_in_huge_pages_and_sparse_memory_stays_small(store: SnapshotStore) -> None:
    """The restored process holds the same data; its sparse mapping did not grow to huge pages."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        rss_before = memory_kb(holder.pid, "Rss")
        manifest = store.checkpoint(holder.pid, "huge-pages", pipes={"stdin": 0, "stdout": 1})
        holder.stdin.write("go\n")  # type: ignore[union-attr]
        holder.stdin.flush()  # type: ignore[union-attr]
        expected = holder.stdout.readline().strip()
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    tree = store.restore(manifest.id, pipes={"stdin": stdin_read, "stdout": stdout_write})
    os.close(stdin_read)
    os.close(stdout_write)
    try:
        rss_after = memory_kb(tree.pid, "Rss")
        huge = memory_kb(tree.pid, "AnonHugePages")
        with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
            to_tree.write("go\n")
            to_tree.flush()
            assert from_tree.readline().strip() == expected, "the restored data is the dumped data"
    finally:
        tree.kill()
    # 128 sparse pages as huge pages would be 256 MiB more.
    assert rss_after < rss_before + 32 * 1024, (rss_before, rss_after)
    if thp_mode() == "never":
        pytest.skip("transparent huge pages are off on this machine: nothing more to check")
    if not (Path(find_criu()).parent / ".criu-patches").exists():
        pytest.skip("the CRIU in use is not snapkernel's build (scripts/criu-patches): no huge pages expected")
    assert huge >= 32 * 1024, f"only {huge} kB of the 64 MiB dense buffer came back in huge pages"
