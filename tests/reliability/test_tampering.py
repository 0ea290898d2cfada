"""Snapshots that someone other than their owner could have changed are never restored, however they were changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel.paths import open_store, reading_store
from snapkernel_engine import VerificationError
from tests.helpers import build, run_json, snapkernel

from .stores import Built

FLIP_BYTE = (
    "import sys\nwith open(sys.argv[1], 'r+b') as f:\n    f.seek(8192 + 100)\n    b = f.read(1)\n"
    "    f.seek(8192 + 100)\n    f.write(bytes([b[0] ^ 0xFF]))\n"
)
REPLACE_FILE = (
    "import os, sys\npath = sys.argv[1]\nsize = os.stat(path).st_size\nforged = path + '.forged'\n"
    "with open(forged, 'wb') as f:\n    f.write(b'\\xcc' * size)\nos.replace(forged, path)\n"
)


def identity(path: Path) -> list[int]:
    """What the hash record keeps of a file (size, mtime, ctime, inode)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def flip_byte(path: Path) -> None:
    """Change one byte of a file in place, as its owner could."""
    with open(path, "r+b") as handle:
        handle.seek(8192 + 100)
        byte = handle.read(1)
        handle.seek(8192 + 100)
        handle.write(bytes([byte[0] ^ 0xFF]))


def assert_cold_then_recovers(built: Built, reason: str) -> None:
    """The run starts cold saying `reason`; after `gc` and a rebuild the notebook restores again."""
    code, summary, _ = run_json(built.notebook, built.store)
    assert code == 0 and summary["start"] == "cold", summary
    assert reason in summary["reason"], summary["reason"]
    assert snapkernel("gc", store=built.store).returncode == 0
    fresh = build(built.notebook, built.store)
    code, summary, _ = run_json(built.notebook, built.store)
    assert summary["start"] == "restored" and summary["snapshot"] == fresh, summary


def test_a_page_image_changed_by_its_owner_is_refused_even_with_a_forged_hash_record(built: Built) -> None:
    """The attack that worked before: edit a page image, then write the remembered hashes to match it."""
    assert run_json(built.notebook, built.store)[1]["start"] == "restored"  # hashed once: the record exists
    pages = built.largest_page_image()
    flip_byte(pages)
    record = built.store / "verified" / f"{built.snapshot}.json"
    remembered = json.loads(record.read_text())
    forged = {**remembered, pages.name: [*identity(pages), remembered[pages.name][-1]]}
    (built.folder / "verified.json").write_text(json.dumps(forged))  # where the record used to be kept
    assert record.parent.stat().st_mode & 0o077 == 0, "the hash records are the owner's alone"
    assert_cold_then_recovers(built, f"images/{pages.name} is corrupted (sha256")


LOOSENED = {
    "the store folder": lambda built: built.store,
    "the snapshot folder": lambda built: built.folder,
    "the images folder": lambda built: built.folder / "images",
    "a page image": lambda built: built.largest_page_image(),
}


@pytest.mark.parametrize("loosened", LOOSENED)
def test_what_another_user_could_write_is_never_restored(built: Built, make_user: Any, loosened: str) -> None:
    """A folder or file left writable by others: another user really changes the snapshot, and it is refused."""
    intruder = make_user()
    for folder in (built.store, built.store / "snapshots", built.folder, built.folder / "images"):
        folder.chmod(0o711)  # others may pass through, as a home folder often lets them
    target = LOOSENED[loosened](built)
    target.chmod(0o666 if target.is_file() else 0o777)
    pages = built.largest_page_image()
    if target.is_file():
        pages.chmod(0o666)
        changed = intruder.run("python3", "-c", FLIP_BYTE, str(pages))
    elif target == built.folder / "images":
        pages.chmod(0o644)
        changed = intruder.run("python3", "-c", REPLACE_FILE, str(pages))
    else:
        changed = intruder.run("mkdir", str(target / "planted"))
    assert changed.returncode == 0, changed.stderr
    listed = snapkernel("list", store=built.store).stdout
    assert "corrupt: not trusted: " in listed and "writable by others" in listed, listed
    assert_cold_then_recovers(built, "not trusted")


def test_images_reached_through_a_symbolic_link_are_never_restored(
    built: Built, make_user: Any, public_dir: Path
) -> None:
    """images/ moved to a world-writable folder and linked back: another user's change there never restores."""
    intruder = make_user()
    elsewhere = public_dir / "elsewhere"
    shutil.move(built.folder / "images", elsewhere)
    elsewhere.chmod(0o777)
    (built.folder / "images").symlink_to(elsewhere)
    changed = intruder.run(
        "python3", "-c", "open(__import__('sys').argv[1], 'w').write('planted')", str(elsewhere / "x")
    )
    assert changed.returncode == 0, changed.stderr
    assert_cold_then_recovers(built, f"snapshots/{built.snapshot}/images is a symbolic link")
    assert elsewhere.exists(), "gc removed the link, not the folder it pointed to"


def test_a_shared_root_refuses_files_of_anyone_but_its_owner(built: Built, make_user: Any, tmp_path: Path) -> None:
    """A read-only root is checked the same way: a file owned by an ordinary user is refused before CRIU runs."""
    intruder = make_user()
    shared = reading_store(built.store, open_store(tmp_path / "own"))
    assert shared.verify(built.snapshot).id == built.snapshot
    os.chown(built.largest_page_image(), intruder.uid, intruder.gid)
    with pytest.raises(VerificationError, match=rf"belongs to uid {intruder.uid} \({intruder.name}\), not to uid 0"):
        shared.restore_snapshot(built.snapshot)
    assert [entry.id for entry in shared.scan()[1]] == [built.snapshot]
    assert not (tmp_path / "own" / "work").exists(), "no restore was started"


LEAK_PROBE = """
import json, os, sys
from snapkernel_engine import VerificationError
from jupyter_snapkernel.paths import open_store

store = open_store(sys.argv[1])
for _ in range(3):  # warm up: imports and caches open what they keep
    store.restore_snapshot(sys.argv[2]).kill()
before = sorted(os.listdir("/proc/self/fd"))
for _ in range(5):
    store.restore_snapshot(sys.argv[2]).kill()
with open(sys.argv[3], "r+b") as pages:
    pages.seek(8192 + 100)
    pages.write(bytes([pages.read(1)[0] ^ 0xFF]))
refused = 0
for _ in range(5):
    try:
        store.restore_snapshot(sys.argv[2])
    except VerificationError as error:
        refused += "is corrupted" in str(error)
after = sorted(os.listdir("/proc/self/fd"))
children = open(f"/proc/self/task/{os.getpid()}/children").read().split()
print(json.dumps({"before": before, "after": after, "refused": refused, "children": children}))
"""


def test_refused_and_accepted_restores_leak_no_fd_process_or_folder(built: Built) -> None:
    """Restores refused before CRIU, and restores that run and are killed, leave their process as it was."""
    probe = subprocess.run(
        [sys.executable, "-c", LEAK_PROBE, str(built.store), built.snapshot, str(built.largest_page_image())],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout.strip().splitlines()[-1])
    assert report["refused"] == 5
    assert report["after"] == report["before"], "no file descriptor is left open"
    assert report["children"] == [], "no process is left"
    store = open_store(built.store)
    assert list(store.work_dir.iterdir()) == [] and list(store.staging_dir.iterdir()) == []
