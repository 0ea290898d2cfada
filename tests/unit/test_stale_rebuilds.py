"""Rebuilds after restores that failed on a changed input: the first at once, then each one waits longer."""

from __future__ import annotations

import time
from pathlib import Path

from jupyter_snapkernel.notebook.state import (
    STALE_REBUILD_BACKOFF_MAX_S,
    STALE_REBUILD_BACKOFF_S,
    _stale_rebuild_held,
    build_record,
    forget_stale_restores,
    note_stale_restore,
    stale_rebuild_wait,
)
from snapkernel_engine import SnapshotStore

SETUP_HASH = "ab" * 32
REASON = "/data/libfoo.so changed since the snapshot (its size differs)"


def test_the_wait_doubles_after_each_rebuilt_snapshot_that_failed_the_same_way() -> None:
    waits = [stale_rebuild_wait(failures) for failures in range(1, 6)]
    assert waits == [0.0, STALE_REBUILD_BACKOFF_S, 2 * STALE_REBUILD_BACKOFF_S, 4 * STALE_REBUILD_BACKOFF_S, 4800.0]
    assert stale_rebuild_wait(40) == STALE_REBUILD_BACKOFF_MAX_S


def test_the_first_stale_restore_rebuilds_at_once_and_a_second_one_waits(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    store.ensure_layout()
    assert note_stale_restore(store, SETUP_HASH, REASON) is True
    assert _stale_rebuild_held(build_record(store, SETUP_HASH)) is None

    assert note_stale_restore(store, SETUP_HASH, REASON) is False
    record = build_record(store, SETUP_HASH)
    assert record is not None and record["restore_failures"] == 2 and record["error"] == REASON
    held = _stale_rebuild_held(record)
    until = time.strftime("%H:%M UTC", time.gmtime(float(record["retry_after"])))  # type: ignore[arg-type]
    assert held == (
        f"2 rebuilt snapshots failed to restore the same way: the next automatic rebuild starts after {until} "
        "(or build it now: %snapshot build, or `jupyter snapkernel build`)"
    )


def test_a_successful_restore_forgets_the_failures(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    store.ensure_layout()
    note_stale_restore(store, SETUP_HASH, REASON)
    forget_stale_restores(store, SETUP_HASH)
    assert build_record(store, SETUP_HASH) is None
    assert note_stale_restore(store, SETUP_HASH, REASON) is True, "counted from one again"


def test_a_damaged_record_counts_from_one_again(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path / "store")
    store.ensure_layout()
    (tmp_path / "store" / "builds").mkdir()
    for damaged in ('{"state": "stale", "restore_failures": "many"}', "[1, 2]", "not json"):
        (tmp_path / "store" / "builds" / f"{SETUP_HASH}.json").write_text(damaged)
        assert note_stale_restore(store, SETUP_HASH, REASON) is True, damaged
