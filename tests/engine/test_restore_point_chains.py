"""Chains of restore points in the store: incremental images of a restored tree, restored whole, kept whole."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from snapkernel_engine import Manifest, SnapshotStore, VerificationError
from tests.helpers import Conversation, Workload, pipes_for_restore

PIPES = {"stdin": 0, "stdout": 1}
MB = 1_000_000


def restored(store: SnapshotStore, manifest: Manifest) -> Conversation:
    """Restore a snapshot of the workload with new pipes."""
    handed, to_tree, from_tree, to_close = pipes_for_restore()
    try:
        tree = store.restore_snapshot(manifest.id, key=manifest.key, pipes=handed)
    finally:
        for fd in to_close:
            os.close(fd)
    return Conversation(tree, to_tree, from_tree)


@dataclass
class Chain:
    """Three restore points of one tree, each with the checksum of the workload's data at its checkpoint."""

    points: list[Manifest]
    checksums: list[str]


@pytest.fixture
def chain(store: SnapshotStore, workload: Workload) -> Iterator[Chain]:
    """A full image, then two incremental points taken of a tree restored from it (as a build from a point)."""
    first = store.take_snapshot(workload.pid, "point-1", pipes=PIPES)
    conversation = restored(store, first)
    checksums = [str(conversation.ask("report")["checksum"])]
    points = [first]
    for key, megabytes in (("point-2", 10), ("point-3", 3)):
        checksums.append(str(conversation.ask(f"rewrite {megabytes}")["checksum"]))
        points.append(store.take_snapshot(conversation.tree.pid, key, pipes=PIPES, parent=points[-1]))
    conversation.tree.kill()
    yield Chain(points, checksums)


def test_points_of_a_restored_tree_keep_only_changed_pages_and_each_restores_its_own_state(
    store: SnapshotStore, chain: Chain
) -> None:
    first, second, third = chain.points
    assert (second.parent, third.parent) == (first.id, second.id)
    assert first.size_bytes > 100 * MB
    assert 10 * MB < second.size_bytes < first.size_bytes // 8, second.size_bytes
    assert 3 * MB < third.size_bytes < first.size_bytes // 8, third.size_bytes
    for point, checksum in zip(chain.points, chain.checksums, strict=True):
        conversation = restored(store, point)
        try:
            report = conversation.ask("report")
            assert report["checksum"] == checksum and report["thread_alive"] and report["child_alive"], report
        finally:
            conversation.tree.kill()
    assert list(store.work_dir.iterdir()) == [], "each restore's view of its chain is removed"


def test_a_damaged_parent_is_refused_before_criu_runs(store: SnapshotStore, chain: Chain) -> None:
    pages = max((store.snapshots_dir / chain.points[0].id / "images").glob("pages-*.img"), key=os.path.getsize)
    with open(pages, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\0" * 16 if handle.read(16) != b"\0" * 16 else b"\1" * 16)
    with pytest.raises(VerificationError, match=f"snapshot {chain.points[0].id}: images/{pages.name} is corrupted"):
        store.restore_snapshot(chain.points[2].id, key=chain.points[2].key, pipes={})


def test_deleting_a_point_deletes_those_incremental_to_it_and_nothing_else(store: SnapshotStore, chain: Chain) -> None:
    first, second, third = chain.points
    assert store.delete(second.id) == [third.id, second.id]
    assert [manifest.id for manifest in store.list()] == [first.id]


def test_a_point_whose_parent_is_gone_is_listed_as_corrupt_and_gc_removes_it(
    store: SnapshotStore, chain: Chain
) -> None:
    first, second, third = chain.points
    shutil.rmtree(store.snapshots_dir / second.id)  # as a crash or a hand could leave it
    manifests, corrupt = store.scan()
    assert [manifest.id for manifest in manifests] == [first.id]
    assert [(entry.id, "is missing or corrupt" in entry.reason) for entry in corrupt] == [(third.id, True)]
    assert third.id in store.clean_up()
    assert [manifest.id for manifest in store.list()] == [first.id]
    conversation = restored(store, first)
    try:
        assert conversation.ask("report")["checksum"] == chain.checksums[0]
    finally:
        conversation.tree.kill()


def test_a_quota_smaller_than_the_chain_evicts_its_ends_first_and_what_stays_restores(
    store: SnapshotStore, chain: Chain
) -> None:
    first, second, third = chain.points
    deleted = store.clean_up(quota_bytes=first.size_bytes + second.size_bytes)
    assert deleted == [third.id]
    assert [manifest.id for manifest in store.list()] == [first.id, second.id]
    conversation = restored(store, second)
    try:
        assert conversation.ask("report")["checksum"] == chain.checksums[1]
    finally:
        conversation.tree.kill()


def test_the_count_limit_counts_a_chain_as_one_snapshot(store: SnapshotStore, chain: Chain, workload: Workload) -> None:
    other = store.take_snapshot(workload.pid, "another-notebook", pipes=PIPES)
    assert store.clean_up(max_snapshots=2) == []
    assert set(store.clean_up(max_snapshots=1)) == {point.id for point in chain.points}  # the least recently used
    assert [manifest.id for manifest in store.list()] == [other.id]
