"""Page images hashed while CRIU writes them: the digests are those of the files as they stay, a file that
changes after it was hashed is refused, and a build's time is split into its stages."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from snapkernel_engine import SnapshotStore
from snapkernel_engine.integrity import sha256
from snapkernel_engine.page_hashing import PageImageHasher
from snapkernel_engine.stages import CHECKPOINT_STAGES, STAGES, StageClock
from tests.helpers import Workload, wait_until

PIPES = {"stdin": 0, "stdout": 1}
WAIT_S = 30.0


def test_page_images_hashed_while_criu_writes_them_have_the_digests_of_the_files_afterwards(
    store: SnapshotStore, workload: Workload
) -> None:
    """Two real dumps of a tree with a child (a page image each): every image's record is its file's size and
    sha256 read back afterwards, and a full verification of each snapshot passes."""
    for rewrite in (None, "rewrite 30"):
        if rewrite is not None:
            workload.ask(rewrite)
        clock = StageClock()
        manifest = store.take_snapshot(workload.pid, f"key-{rewrite}", pipes=PIPES, clock=clock, replace=False)
        images = store.snapshots_dir / manifest.id / "images"
        pages = sorted(name for name in manifest.files if name.startswith("pages-"))
        assert len(pages) >= 2, manifest.files.keys()
        assert {name: (record.size, record.sha256) for name, record in manifest.files.items()} == {
            name: ((images / name).stat().st_size, sha256(images / name)) for name in manifest.files
        }
        store.verified.forget(manifest.id)
        store.verify(manifest.id, mode="sha256")
        assert clock.seconds.keys() <= set(CHECKPOINT_STAGES) | {"replace"}
        assert clock.seconds["criu_dump"] == pytest.approx(manifest.dump_duration_s, abs=0.001)


def test_a_file_growing_in_pieces_is_hashed_as_it_grows(tmp_path: Path) -> None:
    """Pieces of every size appended to two page images are hashed before the writer is done; the records equal
    the files' hashes afterwards, and files other than page images are left to the caller."""
    pieces = [os.urandom(size) for size in (4096, 1, 7 << 20, 12345, 0, 3 << 20, 4096 * 3 + 5)]
    with PageImageHasher(tmp_path) as hasher:
        written = 0
        for index, piece in enumerate(pieces):
            with open(tmp_path / f"pages-{1 + index % 2}.img", "ab") as image:
                image.write(piece)
            written += len(piece)
            wait_until(lambda: hasher.hashed_bytes == written, WAIT_S, f"the {written} bytes written were not hashed")  # noqa: B023
        (tmp_path / "core-1.img").write_bytes(b"core")
        records = hasher.finish()
    assert hasher.hashed_while_writing == sum(map(len, pieces))
    assert {name: (record.size, record.sha256) for name, record in records.items()} == {
        name: ((tmp_path / name).stat().st_size, hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        for name in ("pages-1.img", "pages-2.img")
    }


@pytest.mark.parametrize("change", ["replaced", "truncated"])
def test_a_page_image_changed_after_it_was_hashed_is_refused(tmp_path: Path, change: str) -> None:
    """A page image replaced by another file, or cut short, after its bytes were hashed: `finish` raises, so no
    manifest can name a hash its file does not have."""
    image = tmp_path / "pages-1.img"
    image.write_bytes(os.urandom(1 << 20))
    with PageImageHasher(tmp_path) as hasher:
        wait_until(lambda: hasher.hashed_bytes == 1 << 20, WAIT_S, "the page image was not hashed")
        if change == "replaced":
            (tmp_path / "other").write_bytes(os.urandom(1 << 20))
            os.replace(tmp_path / "other", image)
        else:
            os.truncate(image, 4096)
        with pytest.raises(OSError, match=r"pages-1\.img changed after it was hashed \(1048576 bytes hashed\)"):
            hasher.finish()


def test_a_hasher_left_early_stops_its_thread(tmp_path: Path) -> None:
    """Leaving the block without `finish` (CRIU failed) stops the thread and closes the images it held open."""
    (tmp_path / "pages-1.img").write_bytes(os.urandom(1 << 20))
    before = set(os.listdir("/proc/self/fd"))
    with PageImageHasher(tmp_path) as hasher:
        wait_until(lambda: hasher.hashed_bytes == 1 << 20, WAIT_S, "the page image was not hashed")
    assert not any(thread.name == "snapkernel-page-hash" for thread in threading.enumerate())
    assert set(os.listdir("/proc/self/fd")) <= before


def test_a_stage_clock_splits_wall_time_into_known_stages() -> None:
    """Laps add up per stage, in the order they ran; the checkpoint's total leaves out the setup and clean-up."""
    clock = StageClock({"setup": 2.0, "quiesce": 0.5})
    clock.lap("prepare")
    clock.lap("criu_dump")
    clock.lap("prepare")
    clock.lap("replace")
    assert list(clock.seconds) == ["setup", "quiesce", "prepare", "criu_dump", "replace"]
    assert clock.checkpoint_s() == pytest.approx(clock.seconds["prepare"] + clock.seconds["criu_dump"])
    with pytest.raises(ValueError, match="unknown stage 'dumping'"):
        clock.lap("dumping")
    assert set(STAGES) >= set(clock.seconds)
