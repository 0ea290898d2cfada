"""Incremental images: a later dump of a process keeps only the pages that changed, and restores whole."""

from __future__ import annotations

import os
from pathlib import Path

from snapkernel_engine.checkpoint import DumpResult, dump_tree
from snapkernel_engine.incremental import PARENT_LINK, make_incremental
from snapkernel_engine.restore import restore_tree
from tests.helpers import Conversation, Workload, pipes_for_restore

PIPES = {"stdin": 0, "stdout": 1}
MiB = 1 << 20


def pages_bytes(images: Path) -> int:
    """Bytes of page data an images folder stores itself (not through its parent link)."""
    return sum(path.stat().st_size for path in images.glob("pages-*.img"))


def restored(images: Path, work: Path, dump: DumpResult) -> Conversation:
    """Restore an images folder with new pipes in place of the dumped stdin and stdout."""
    handed, to_tree, from_tree, to_close = pipes_for_restore()
    inherit = {dump.pipes[name]: fd for name, fd in handed.items()}
    try:
        tree = restore_tree(images, work, inherit_fds=inherit)
    finally:
        for fd in to_close:
            os.close(fd)
    return Conversation(tree, to_tree, from_tree)


def test_a_later_dump_keeps_only_changed_pages_and_a_chain_of_two_restores_each_state(
    tmp_path: Path, workload: Workload
) -> None:
    first = dump_tree(workload.pid, tmp_path / "first", tmp_path / "work-1", pipes=PIPES)
    after_ten = workload.ask("rewrite 10")["checksum"]
    second = dump_tree(workload.pid, tmp_path / "second", tmp_path / "work-2", pipes=PIPES)
    middle = make_incremental(tmp_path / "second", tmp_path / "first", tmp_path / "second-incremental")
    after_three = workload.ask("rewrite 3")["checksum"]
    third = dump_tree(workload.pid, tmp_path / "third", tmp_path / "work-3", pipes=PIPES)
    last = make_incremental(tmp_path / "third", tmp_path / "second-incremental", tmp_path / "third-incremental")

    full = pages_bytes(tmp_path / "second")
    assert full > 100 * MiB
    # The rewritten megabytes, and what the interpreter's allocator touched meanwhile (a freed 10 MB
    # buffer raises glibc's mmap threshold, so the next 3 MB land on the heap): a small part of a full dump.
    assert 10 * MiB <= pages_bytes(tmp_path / "second-incremental") < full // 8, middle
    assert 3 * MiB <= pages_bytes(tmp_path / "third-incremental") < full // 8, last
    assert middle.stored_bytes == pages_bytes(tmp_path / "second-incremental")
    assert os.readlink(tmp_path / "third-incremental" / PARENT_LINK) == "../second-incremental"

    for images, dump, checksum in [
        (tmp_path / "second-incremental", second, after_ten),
        (tmp_path / "third-incremental", third, after_three),
    ]:
        conversation = restored(images, tmp_path / f"restore-{images.name}", dump)
        try:
            report = conversation.ask("report")
            assert report["checksum"] == checksum, images.name
            assert report["thread_alive"] is True and report["child_alive"] is True
        finally:
            conversation.tree.kill()
    assert first.pid == second.pid == third.pid == workload.pid
