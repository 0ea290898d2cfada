"""Retention: which snapshots and leftovers a clean-up removes, all decided from one listing of the store."""

from __future__ import annotations

import builtins
import shutil
import time
from collections.abc import Collection, Iterable
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


def try_delete(
    store: SnapshotStore, snapshot_id: str, listing: Collection[Manifest] | None = None
) -> builtins.list[str]:
    """Delete a snapshot and the restore points that need it, unless one of them is being restored (or it is
    already gone); return the ids deleted. `listing` is the store's snapshots, where the caller has them."""
    try:
        return store.delete(snapshot_id, listing)
    except (SnapshotBusy, SnapshotNotFound):
        return []


def root_of(manifest: Manifest, by_id: dict[str, Manifest]) -> str:
    """The full image a restore point's chain starts from (its own id for a full image)."""
    seen = {manifest.id}
    while manifest.parent is not None and manifest.parent in by_id and manifest.parent not in seen:
        manifest = by_id[manifest.parent]
        seen.add(manifest.id)
    return manifest.id


class CleanUp:
    """One clean-up of a store: it lists the store once, and every step works from that listing."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.now = time.time()
        self.deleted: builtins.list[str] = []
        self.listing: builtins.list[Manifest] = []

    def run(self, max_age_s: float | None, quota_bytes: int | None, max_snapshots: int | None) -> builtins.list[str]:
        """Remove leftovers, corrupt entries and replaced snapshots, then those unused for `max_age_s`, then the
        least recently used beyond the quota and the count; return the ids deleted."""
        self.remove_leftovers()
        manifests, corrupt = self.store.scan()
        self.listing = manifests
        self.remove_corrupt(corrupt)
        for manifest in replaced(manifests):
            self.try_delete(manifest.id)
        by_use = sorted((m for m in manifests if m.id not in self.deleted), key=lambda m: last_used(self.store, m))
        if max_age_s is not None:
            for manifest in by_use:
                if manifest.id not in self.deleted and self.now - last_used(self.store, manifest) > max_age_s:
                    self.try_delete(manifest.id)
        kept = [manifest for manifest in by_use if manifest.id not in self.deleted]
        if quota_bytes is not None:
            kept = self.within_quota(kept, quota_bytes)
        if max_snapshots is not None:
            kept = self.within_count(kept, max_snapshots)
        return self.deleted

    def within_quota(self, by_use: builtins.list[Manifest], quota_bytes: int) -> builtins.list[Manifest]:
        """Delete the least recently used of `by_use` that no other needs (the ends of chains first) until the
        rest fit in the quota; return those kept."""
        kept = builtins.list(by_use)
        total = sum(manifest.size_bytes for manifest in kept)
        busy: set[str] = set()
        while total > quota_bytes:
            needed = {manifest.parent for manifest in kept}
            ends = [manifest for manifest in kept if manifest.id not in needed and manifest.id not in busy]
            if not ends:
                break
            if self.try_delete(ends[0].id):
                kept.remove(ends[0])
                total -= ends[0].size_bytes
            else:
                busy.add(ends[0].id)
        return kept

    def within_count(self, by_use: builtins.list[Manifest], max_snapshots: int) -> builtins.list[Manifest]:
        """Delete the least recently used chains of `by_use` (a full image with its restore points counts as
        one) beyond `max_snapshots`; return those kept."""
        by_id = {manifest.id: manifest for manifest in by_use}
        roots: dict[str, None] = {}
        for manifest in reversed(by_use):  # most recently used first: a chain is as recent as its newest use
            roots.setdefault(root_of(manifest, by_id), None)
        for root in reversed(builtins.list(roots)[max_snapshots:]):  # least recently used first
            self.try_delete(root)
        return [manifest for manifest in by_use if manifest.id not in self.deleted]

    def remove_corrupt(self, corrupt: Iterable[CorruptSnapshot]) -> None:
        """Take every entry of the snapshots folder that is not a usable snapshot out of the store."""
        for entry in corrupt:
            with suppress(OSError):
                self.store.remove_entry(self.store.snapshots_dir / entry.id)
                self.deleted.append(entry.id)

    def try_delete(self, snapshot_id: str) -> bool:
        """Delete a snapshot and the restore points that need it unless one is being restored (or it is gone),
        and count them; tell whether it went."""
        gone = try_delete(self.store, snapshot_id, [m for m in self.listing if m.id not in self.deleted])
        self.deleted += gone
        return bool(gone)

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
