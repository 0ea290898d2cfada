"""Retention: which snapshots and leftovers a clean-up removes, all decided from one listing of the store."""

from __future__ import annotations

import builtins
import shutil
import time
from collections.abc import Iterable
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING

from .errors import SnapshotBusy, SnapshotNotFound
from .fingerprint import digest
from .inputs import inputs_folder
from .layout import OWN_NAMES
from .locks import LOCK, NEW_PREFIX, remove_if_unlocked
from .manifest import Manifest

if TYPE_CHECKING:
    from .store import CorruptSnapshot, SnapshotStore

NEW_DIR_AGE_S = 3600.0  # a NEW_PREFIX dir this old was left by a process killed while creating it


def replaced(manifests: Iterable[Manifest]) -> builtins.list[Manifest]:
    """Those of `manifests` (oldest first) that a newer one of the same key on the same hardware replaces.

    Snapshots whose setup read files relative to their notebook's folder replace only those of the same
    folder: the same cells in two folders with their own data keep a snapshot each."""
    manifests = builtins.list(manifests)
    newest: dict[tuple[str, str, str | None], Manifest] = {}
    for manifest in manifests:
        newest[(manifest.key, digest(manifest.hardware), inputs_folder(manifest.inputs))] = manifest
    kept = {manifest.id for manifest in newest.values()}
    return [manifest for manifest in manifests if manifest.id not in kept]


def last_used(store: SnapshotStore, manifest: Manifest) -> float:
    """When a snapshot was last restored (or created), as a timestamp."""
    try:
        return (store.snapshots_dir / manifest.id / LOCK).stat().st_mtime
    except OSError:
        return datetime.fromisoformat(manifest.created).timestamp()


def try_delete(store: SnapshotStore, snapshot_id: str) -> bool:
    """Delete a snapshot unless it is being restored (or already gone); tell whether it was deleted."""
    try:
        store.delete(snapshot_id)
    except (SnapshotBusy, SnapshotNotFound):
        return False
    return True


class CleanUp:
    """One clean-up of a store: it lists the store once, and every step works from that listing."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.now = time.time()
        self.deleted: builtins.list[str] = []

    def run(self, max_age_s: float | None, quota_bytes: int | None, max_snapshots: int | None) -> builtins.list[str]:
        """Remove leftovers, corrupt entries and replaced snapshots, then those unused for `max_age_s`, then the
        least recently used beyond the quota and the count; return the ids deleted."""
        self.remove_leftovers()
        manifests, corrupt = self.store.scan()
        self.remove_corrupt(corrupt)
        gone = {manifest.id for manifest in replaced(manifests) if self.try_delete(manifest.id)}
        by_use = sorted((m for m in manifests if m.id not in gone), key=lambda m: last_used(self.store, m))
        if max_age_s is not None:
            by_use = [manifest for manifest in by_use if not self.unused_too_long(manifest, max_age_s)]
        kept = by_use
        if quota_bytes is not None:
            kept = self.within_quota(kept, quota_bytes)
        if max_snapshots is not None:
            kept = self.within_count(kept, max_snapshots)
        return self.deleted

    def unused_too_long(self, manifest: Manifest, max_age_s: float) -> bool:
        """Delete a snapshot unused for longer than `max_age_s`; tell whether it went."""
        return self.now - last_used(self.store, manifest) > max_age_s and self.try_delete(manifest.id)

    def within_quota(self, by_use: builtins.list[Manifest], quota_bytes: int) -> builtins.list[Manifest]:
        """Delete the least recently used of `by_use` until the rest fit in the quota; return those kept."""
        total = sum(manifest.size_bytes for manifest in by_use)
        kept = []
        for manifest in by_use:
            if total > quota_bytes and self.try_delete(manifest.id):
                total -= manifest.size_bytes
            else:
                kept.append(manifest)
        return kept

    def within_count(self, by_use: builtins.list[Manifest], max_snapshots: int) -> builtins.list[Manifest]:
        """Delete the least recently used of `by_use` beyond `max_snapshots`; return those kept."""
        excess = max(len(by_use) - max_snapshots, 0)
        gone = {manifest.id for manifest in by_use[:excess] if self.try_delete(manifest.id)}
        return [manifest for manifest in by_use if manifest.id not in gone]

    def remove_corrupt(self, corrupt: Iterable[CorruptSnapshot]) -> None:
        """Take every entry of the snapshots folder that is not a usable snapshot out of the store."""
        for entry in corrupt:
            with suppress(OSError):
                self.store.remove_entry(self.store.snapshots_dir / entry.id)
                self.deleted.append(entry.id)

    def try_delete(self, snapshot_id: str) -> bool:
        """Delete a snapshot unless it is being restored (or already gone), and count it; tell whether it went."""
        if not try_delete(self.store, snapshot_id):
            return False
        self.deleted.append(snapshot_id)
        return True

    def remove_leftovers(self) -> None:
        """Remove what dead builds, restores and deletions left in staging/ and work/, and forgotten hashes
        (only entries named as snapkernel names them)."""
        for parent, folder in ((self.store.staging_dir, "staging"), (self.store.work_dir, "work")):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if not OWN_NAMES[folder].fullmatch(entry.name):
                    continue
                with suppress(OSError):
                    if not entry.name.startswith(NEW_PREFIX):
                        remove_if_unlocked(entry)  # a live build or restore holds its folder's lock
                    elif self.now - entry.lstat().st_mtime > NEW_DIR_AGE_S:
                        shutil.rmtree(entry, ignore_errors=True)
        self.store.verified.forget_missing(self.store.snapshots_dir, OWN_NAMES["snapshots"])
