"""Sealing a dump's images: the hashes taken while the files are flushed are those of the files as they stay."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from snapkernel_engine.integrity import seal
from snapkernel_engine.manifest import FileRecord
from snapkernel_engine.stages import StageClock


def test_hashes_taken_while_flushing_equal_hashes_of_the_files_afterwards(tmp_path: Path) -> None:
    """Every image file gets its size and the sha256 of its bytes, and the store's modes."""
    staging = tmp_path / "staging"
    images = staging / "images"
    images.mkdir(parents=True)
    contents = {"pages-1.img": os.urandom(9 * 2**20 + 123), "core-1.img": b"core", "empty.img": b""}
    for name, data in contents.items():
        (images / name).write_bytes(data)

    clock = StageClock()
    files = seal(staging, images, 0o700, 0o600, clock)

    assert {name: (record.size, record.sha256) for name, record in files.items()} == {
        name: (len(data), hashlib.sha256((images / name).read_bytes()).hexdigest()) for name, data in contents.items()
    }
    assert all(stat.S_IMODE((images / name).stat().st_mode) == 0o600 for name in contents)
    assert stat.S_IMODE(images.stat().st_mode) == 0o700
    assert list(clock.seconds) == ["hash", "fsync"]


def test_images_hashed_while_written_keep_their_records_and_the_rest_are_hashed(tmp_path: Path) -> None:
    """A record handed in (a page image hashed as CRIU wrote it) is kept as it is; the other files are hashed."""
    staging = tmp_path / "staging"
    images = staging / "images"
    images.mkdir(parents=True)
    (images / "pages-1.img").write_bytes(b"pages")
    (images / "core-1.img").write_bytes(b"core")
    streamed = FileRecord(size=5, sha256=hashlib.sha256(b"pages").hexdigest())

    files = seal(staging, images, 0o700, 0o600, StageClock(), {"pages-1.img": streamed})

    assert files == {
        "pages-1.img": streamed,
        "core-1.img": FileRecord(size=4, sha256=hashlib.sha256(b"core").hexdigest()),
    }
