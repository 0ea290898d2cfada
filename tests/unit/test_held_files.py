"""The files a process holds and the folder it runs in, recorded at the snapshot and checked at every start."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapkernel_engine.inputs import fingerprint_held_files, held_files_changed, without_inodes


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes]]]:
    """A process running in its own folder with a data file open as its stdin."""
    folder = tmp_path / "project"
    folder.mkdir()
    data = folder / "data.bin"
    data.write_bytes(b"x" * 100)
    with open(data, "rb") as stdin:
        process = subprocess.Popen(["sleep", "600"], cwd=folder, stdin=stdin)
    try:
        yield folder, data, process
    finally:
        process.kill()
        process.wait()


def test_the_open_file_the_mapped_program_and_the_folder_are_recorded(
    holder: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    folder, data, process = holder
    recorded = fingerprint_held_files([process.pid])
    assert list(recorded["folders"]) == [str(folder)]
    assert str(data) in recorded["files"]
    assert any(path.endswith("/sleep") for path in recorded["files"]), "the mapped executable"
    assert not [path for path in recorded["files"] if path.startswith(("/dev/", "/proc/"))]
    assert held_files_changed(recorded) == []


def test_a_file_rewritten_in_place_with_another_size_is_a_change(
    holder: tuple[Path, Path, subprocess.Popen[bytes]],
) -> None:
    _, data, process = holder
    recorded = fingerprint_held_files([process.pid])
    data.write_bytes(b"y" * 101)
    assert held_files_changed(recorded) == [f"{data} changed since the snapshot"]


def test_a_moved_folder_is_named(holder: tuple[Path, Path, subprocess.Popen[bytes]]) -> None:
    folder, data, process = holder
    recorded = fingerprint_held_files([process.pid])
    folder.rename(folder.with_name("renamed"))
    assert held_files_changed(recorded) == [
        f"the folder it ran in ({folder}) moved or was removed since the snapshot",
        f"{data} moved or was removed since the snapshot",
    ]


def test_a_manifest_without_held_files_finds_no_change() -> None:
    assert held_files_changed({}) == []


def test_without_inodes_a_copy_with_the_same_content_times_and_modes_matches_and_a_changed_one_does_not(
    holder: tuple[Path, Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """A snapshot fetched from another machine: its folder and files stand where a copy of them (other inodes,
    the same size, mtime and mode) is found at their paths; a changed file is still told."""
    _, data, process = holder
    recorded = fingerprint_held_files([process.pid])
    assert "ino" in recorded["files"][str(data)]
    fetched = without_inodes(recorded)
    assert all("ino" not in record for kind in fetched.values() for record in kind.values())
    stat = data.stat()
    data.rename(tmp_path / "original.bin")  # another inode at the same path, with the same bytes and times
    data.write_bytes(b"x" * 100)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert held_files_changed(recorded) == [f"{data} changed since the snapshot"]
    assert held_files_changed(fetched) == []
    data.write_bytes(b"y" * 100)
    assert held_files_changed(fetched) == [f"{data} changed since the snapshot"]
