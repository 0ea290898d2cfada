"""A damaged snapshot is rejected before CRIU runs, with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapkernel_engine import Manifest, RestoreError, SnapshotStore, VerificationError
from tests.helpers import Workload

KEY = "verified-key"


@pytest.fixture
def snapshot(store: SnapshotStore, workload: Workload) -> Manifest:
    return store.take_snapshot(workload.pid, KEY, pipes={"stdin": 0, "stdout": 1})


def images_of(store: SnapshotStore, manifest: Manifest) -> Path:
    return store.snapshots_dir / manifest.id / "images"


def largest_pages_image(store: SnapshotStore, manifest: Manifest) -> Path:
    pages = sorted(images_of(store, manifest).glob("pages-*.img"), key=lambda path: path.stat().st_size)
    return pages[-1]


def flip_byte(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))


def truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size - 4096)


def assert_rejected_before_criu(store: SnapshotStore, manifest: Manifest, match: str, key: str = KEY) -> None:
    with pytest.raises(VerificationError, match=match) as caught:
        store.restore_snapshot(manifest.id, key=key)
    assert manifest.id in str(caught.value)
    # CRIU gets a private work dir only once verification passed; none may exist.
    assert not store.work_dir.exists() or list(store.work_dir.iterdir()) == []


def test_flipped_byte_in_page_image(store: SnapshotStore, snapshot: Manifest) -> None:
    pages = largest_pages_image(store, snapshot)
    flip_byte(pages)
    assert_rejected_before_criu(store, snapshot, rf"images/{pages.name} is corrupted \(sha256")


def test_truncated_file(store: SnapshotStore, snapshot: Manifest) -> None:
    pages = largest_pages_image(store, snapshot)
    truncate(pages)
    assert_rejected_before_criu(store, snapshot, rf"images/{pages.name} has \d+ bytes, expected \d+ \(truncated\)")


def test_missing_file(store: SnapshotStore, snapshot: Manifest) -> None:
    core = next(images_of(store, snapshot).glob("core-*.img"))
    core.unlink()
    assert_rejected_before_criu(store, snapshot, rf"missing file images/{core.name}")


def test_unexpected_file(store: SnapshotStore, snapshot: Manifest) -> None:
    (images_of(store, snapshot) / "extra.img").write_bytes(b"x")
    assert_rejected_before_criu(store, snapshot, "unexpected file images/extra.img")


def test_manifest_naming_another_key(store: SnapshotStore, snapshot: Manifest) -> None:
    assert_rejected_before_criu(store, snapshot, "does not match the requested key", key="another-key")


def test_manifest_edited_to_another_key(store: SnapshotStore, snapshot: Manifest) -> None:
    path = store.snapshots_dir / snapshot.id / "manifest.json"
    data = json.loads(path.read_text())
    data["key"] = "someone-elses-key"
    path.write_text(json.dumps(data))
    assert_rejected_before_criu(store, snapshot, "manifest key 'someone-elses-key' does not match")


def test_malformed_manifest(store: SnapshotStore, snapshot: Manifest) -> None:
    (store.snapshots_dir / snapshot.id / "manifest.json").write_text("{not json")
    assert_rejected_before_criu(store, snapshot, "manifest.json: not valid JSON")


def break_first_entry(path: Path) -> None:
    """Make the first entry of a CRIU image unparseable: its first tag becomes an endless varint."""
    magics_and_size = 12  # the common magic, the image's magic, then the entry's 4-byte size
    with open(path, "r+b") as handle:
        handle.seek(magics_and_size)
        handle.write(b"\xff" * 16)


def test_size_only_mode_lets_criu_report_damage(store: SnapshotStore, snapshot: Manifest) -> None:
    """With size-only verification a damaged core image reaches CRIU, which fails cleanly."""
    core = next(images_of(store, snapshot).glob("core-*.img"))
    # A byte flipped at a random place can land in register data that still unpacks, and CRIU
    # then fails later on a different check; a broken first tag fails at unpacking every time.
    break_first_entry(core)
    store.verify(snapshot.id, key=KEY, mode="size")
    with pytest.raises(RestoreError, match=f"Failed unpacking object .*{core.name}"):
        store.restore_snapshot(snapshot.id, key=KEY, verify="size")
    assert list(store.work_dir.iterdir()) == [], "the per-restore work dir is removed"


def test_unknown_pipe_name(store: SnapshotStore, snapshot: Manifest) -> None:
    with pytest.raises(VerificationError, match="has no pipe named control"):
        store.restore_snapshot(snapshot.id, key=KEY, pipes={"control": 0})
