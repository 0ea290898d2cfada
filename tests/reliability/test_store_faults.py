"""A damaged store never stops a kernel: lookups skip bad entries, `list` shows them corrupt, `gc` removes them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import run_json, snapkernel

from .stores import Built

COPY = "c0ffee000001"  # a second snapshot folder, copied from the good one and then damaged


def damaged_copy(store: Path, good: str) -> Path:
    """A copy of the good snapshot under another id, valid until a fault is applied to it."""
    folder = store / "snapshots" / COPY
    shutil.copytree(store / "snapshots" / good, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "id": COPY}))
    return folder


def stray_file(store: Path, good: str) -> str:
    (store / "snapshots" / "README").write_text("notes about my snapshots\n")
    return "README"


def empty_folder(store: Path, good: str) -> str:
    (store / "snapshots" / COPY).mkdir(mode=0o700)
    return COPY


def garbage_manifest(store: Path, good: str) -> str:
    (damaged_copy(store, good) / "manifest.json").write_bytes(b"\x00garbage{")
    return COPY


def unreadable_manifest(store: Path, good: str) -> str:
    folder = damaged_copy(store, good)
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").mkdir(mode=0o700)  # reading it fails with EISDIR, as an unreadable file would
    return COPY


def future_manifest(store: Path, good: str) -> str:
    path = damaged_copy(store, good) / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 99}))
    return COPY


def missing_images(store: Path, good: str) -> str:
    shutil.rmtree(damaged_copy(store, good) / "images")
    return COPY


def missing_image_file(store: Path, good: str) -> str:
    next((damaged_copy(store, good) / "images").glob("pages-*.img")).unlink()
    return COPY


def symbolic_link(store: Path, good: str) -> str:
    elsewhere = store.parent / "elsewhere"
    shutil.copytree(store / "snapshots" / good, elsewhere)
    (store / "snapshots" / COPY).symlink_to(elsewhere)
    return COPY


FAULTS: dict[str, tuple[Callable[[Path, str], str], str]] = {
    "stray file": (stray_file, "a stray file, not a snapshot folder"),
    "empty folder": (empty_folder, "no manifest.json"),
    "garbage manifest": (garbage_manifest, "manifest.json: not valid JSON"),
    "unreadable manifest": (unreadable_manifest, "cannot read manifest.json"),
    "manifest of another format": (future_manifest, "manifest.json: unsupported manifest format 99"),
    "no images folder": (missing_images, "no images/ folder"),
    "missing image file": (missing_image_file, "missing file images/pages-"),
    "symbolic link": (symbolic_link, "a symbolic link, not a snapshot folder"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_entry_is_listed_corrupt_skipped_by_restores_and_removed_by_gc(built: Built, fault: str) -> None:
    """Each kind of bad entry: `list` names it and why, a run still restores the good snapshot, gc removes it."""
    notebook, store, good = built.notebook, built.store, built.snapshot
    damage, reason = FAULTS[fault]
    bad = damage(store, good)

    listed = snapkernel("list", store=store)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert f"{good}  " in listed.stdout and "ready" in listed.stdout
    assert any(line.startswith(bad) and f"corrupt: {reason}" in line for line in listed.stdout.splitlines()), (
        listed.stdout
    )
    rows = {row["id"]: row for row in json.loads(snapkernel("list", "--json", store=store).stdout)}
    assert rows[good]["state"] == "ready"
    assert rows[bad]["state"] == "corrupt" and reason in rows[bad]["reason"]

    code, summary, _ = run_json(notebook, store)
    assert code == 0 and summary["start"] == "restored" and summary["snapshot"] == good, summary

    collected = snapkernel("gc", store=store)
    assert collected.returncode == 0 and bad in collected.stdout, collected.stdout + collected.stderr
    assert sorted(path.name for path in (store / "snapshots").iterdir()) == [good]
    assert (store.parent / "elsewhere").exists() or fault != "symbolic link", "gc removed the link, not its target"
    assert list((store / "staging").iterdir()) == [], "nothing is left half-removed"
    code, summary, _ = run_json(notebook, store)
    assert summary["start"] == "restored" and summary["snapshot"] == good, summary
