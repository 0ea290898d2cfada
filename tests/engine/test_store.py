"""The snapshot store: atomic publishing, permissions, lookup, deletion and garbage collection."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from snapkernel_engine import SnapshotBusy, SnapshotNotFound, SnapshotStore, StoreError
from snapkernel_engine.fingerprint import environment_fingerprint, hardware_fingerprint
from snapkernel_engine.manifest import Manifest
from snapkernel_engine.store import MARKER, MARKER_FORMAT, SnapshotCondition
from tests.helpers import Workload, tree_digest

KEY = "store-key"


def test_published_snapshot_layout_and_permissions(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY, labels={"notebook": "a.ipynb"})
    directory = store.snapshots_dir / manifest.id
    assert json.loads((directory / "manifest.json").read_text())["id"] == manifest.id
    for path in [store.root, *store.root.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert path.stat().st_uid == os.geteuid()
        assert mode == (0o700 if path.is_dir() else 0o600), f"{path} has mode {mode:o}"
    assert list(store.staging_dir.iterdir()) == []
    assert manifest.size_bytes == sum(record.size for record in manifest.files.values())
    assert manifest.size_bytes == sum(path.stat().st_size for path in (directory / "images").iterdir())
    assert manifest.labels == {"notebook": "a.ipynb"}
    assert manifest.versions["criu"].startswith("4.")
    assert manifest.environment == environment_fingerprint()
    assert manifest.hardware == hardware_fingerprint()
    assert {"arch", "cpu_model", "cpu_flags_sha256", "kernel_release", "nvidia"} <= manifest.hardware.keys()


def test_lookup_by_key_environment_and_hardware(store: SnapshotStore, workload: Workload) -> None:
    older = store.take_snapshot(workload.pid, KEY)
    newer = store.take_snapshot(workload.pid, KEY, replace=False)
    store.take_snapshot(workload.pid, "other-key")
    assert store.newest_usable(KEY) == newer
    assert store.newest_usable("missing-key") is None

    path = store.snapshots_dir / newer.id / "manifest.json"
    data = json.loads(path.read_text())
    data["hardware"]["cpu_model"] = "Some Other CPU"
    path.write_text(json.dumps(data))
    usable, stale = store.usable_and_stale(KEY)
    assert usable == older
    assert [mismatch.manifest.id for mismatch in stale] == [newer.id]
    assert stale[0].reasons == ["hardware changed (cpu_model)"]

    data["environment"]["distributions_sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    assert "Python environment changed (distributions_sha256)" in store.mismatches(store.get(newer.id))


def test_delete_and_busy_snapshot(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY)
    with store._locked(manifest.id, exclusive=False), pytest.raises(SnapshotBusy):
        store.delete(manifest.id)
    store.delete(manifest.id)
    assert store.list() == []
    with pytest.raises(SnapshotNotFound):
        store.delete(manifest.id)
    with pytest.raises(SnapshotNotFound):
        store.get("../escape")


def test_gc_by_age_and_quota_spares_busy_snapshots(store: SnapshotStore, workload: Workload) -> None:
    first, second, third = (store.take_snapshot(workload.pid, f"{KEY}-{index}") for index in range(3))
    long_ago = time.time() - 10 * 86400
    os.utime(store.snapshots_dir / first.id / ".lock", (long_ago, long_ago))
    assert store.clean_up(max_age_s=86400) == [first.id]

    with store._locked(second.id, exclusive=False):
        # Over quota by both; the least recently used one is being restored and survives.
        assert store.clean_up(quota_bytes=third.size_bytes) == [third.id]
    assert [manifest.id for manifest in store.list()] == [second.id]
    assert store.clean_up(quota_bytes=0) == [second.id]


def test_store_owned_by_another_user_is_refused(store: SnapshotStore) -> None:
    store.root.mkdir(mode=0o700)
    os.chown(store.root, 12345, 12345)
    with pytest.raises(StoreError, match="belongs to uid 12345"):
        store.ensure_layout()


def test_loose_permissions_are_tightened(store: SnapshotStore) -> None:
    store.root.mkdir(mode=0o777)
    os.chmod(store.root, 0o777)
    store.ensure_layout()
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700


def test_a_new_store_carries_its_marker(store: SnapshotStore, workload: Workload) -> None:
    store.take_snapshot(workload.pid, KEY)
    marker = json.loads((store.root / MARKER).read_text())
    assert marker["format"] == MARKER_FORMAT and marker["owner"] == os.geteuid()
    assert store.is_marked() and store.not_a_store_reason() is None


def test_a_folder_of_other_files_is_never_made_a_store_nor_tidied(store: SnapshotStore) -> None:
    """Folders named like a store's (work/, staging/, snapshots/, verified/) that hold other files stay untouched."""
    for folder, name in [("work", "thesis/ch1.tex"), ("staging", "draft.txt"), ("snapshots", "photo.jpg"),
                         ("verified", "0123456789ab.json"), ("snapshots", "0123456789ab/notes.txt")]:  # fmt: skip
        (store.root / folder / name).parent.mkdir(parents=True, exist_ok=True)
        (store.root / folder / name).write_text(f"the user's {name}\n")
    before = tree_digest(store.root)
    refusal = r"is not a snapkernel store: it holds .* and no \.snapkernel-store marker"
    for attempt in (store.ensure_layout, store.clean_up, lambda: store.delete("0123456789ab")):
        with pytest.raises(StoreError, match=refusal):
            attempt()
    assert tree_digest(store.root) == before


def test_an_empty_folder_or_a_store_from_before_the_marker_is_adopted(store: SnapshotStore, workload: Workload) -> None:
    manifest = store.take_snapshot(workload.pid, KEY)
    (store.root / MARKER).unlink()
    assert store.not_a_store_reason() is None, "only snapkernel's own entries: a store from before the marker"
    assert store.clean_up() == [] and store.is_marked()
    assert [kept.id for kept in store.list()] == [manifest.id]


def test_gc_removes_only_leftovers_named_as_snapkernel_names_them(store: SnapshotStore) -> None:
    store.ensure_layout()
    leftover = store.staging_dir / "0123456789ab.tmp"
    leftover.mkdir()
    stranger = store.work_dir / "my-notes"
    stranger.write_text("kept\n")
    store.clean_up()
    assert not leftover.exists() and stranger.read_text() == "kept\n"


class CountingStore(SnapshotStore):
    """A real store that counts how often it reads a snapshot folder (one read per snapshot per listing)."""

    reads = 0

    def _load(self, directory: Path) -> Manifest:
        self.reads += 1
        return super()._load(directory)


def test_a_clean_up_lists_the_store_once_and_evicts_the_least_recently_used(tmp_path: Path, workload: Workload) -> None:
    """Quota, count and replacement all work from one listing; the count goes by last use, not by age."""
    store = CountingStore(tmp_path / "store")
    first, second, third = (store.take_snapshot(workload.pid, f"{KEY}-{index}") for index in range(3))
    now = time.time()
    for manifest, used_ago in ((first, 10), (second, 300), (third, 200)):  # the oldest was restored last
        os.utime(store.snapshots_dir / manifest.id / ".lock", (now - used_ago, now - used_ago))
    store.reads = 0
    total = first.size_bytes + second.size_bytes + third.size_bytes
    assert store.clean_up(quota_bytes=total, max_snapshots=1) == [second.id, third.id]
    assert store.reads == 3, "each snapshot read once: one listing"
    assert [manifest.id for manifest in store.list()] == [first.id]


def test_one_condition_says_ready_stale_or_unusable(store: SnapshotStore, workload: Workload) -> None:
    """The lookup and the listing share one answer: an unusable snapshot is never offered, a stale one says why."""
    manifest = store.take_snapshot(workload.pid, KEY)
    assert store.condition(manifest) == SnapshotCondition("ready", [])
    assert store.condition(manifest, lambda _: ["data.csv changed"]) == SnapshotCondition("stale", ["data.csv changed"])
    store.mark_unusable(manifest.id, "CRIU cannot restore its sockets")
    assert store.condition(manifest) == SnapshotCondition("unusable", ["CRIU cannot restore its sockets"])
    usable, mismatched = store.usable_and_stale(KEY)
    assert usable is None and [(found.manifest.id, found.unusable) for found in mismatched] == [(manifest.id, True)]
