"""The snapshot state of a notebook: none, building, ready, stale or failed."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapkernel_engine import Manifest, SnapshotStore
from snapkernel_engine.inputs import changed_inputs
from snapkernel_engine.store import Mismatch

from .config import SnapKernelSettings
from .paths import open_store, reading_store
from .setup_section import SetupSection, read_setup_section


@dataclass
class NotebookState:
    """What the stores hold for one notebook's current setup section, and what a kernel start does with it."""

    state: str  # none | building | ready | stale | failed
    setup_hash: str | None = None
    snapshot: Manifest | None = None
    reasons: list[str] = field(default_factory=list)
    store: SnapshotStore | None = None  # the store that holds `snapshot`
    restorable: bool = False  # `snapshot` is usable: a kernel start restores it
    cold_reason: str | None = None  # why a kernel start is cold (None: restored, or no setup section)
    rebuild: bool = True  # whether a cold start may build the snapshot (False: it would fail the same way)
    section: SetupSection | None = None
    in_shared_root: bool = False  # `store` is an administrator's shared root, not the user's own store


def builds_dir(store: SnapshotStore) -> Path:
    """Where running and failed builds leave their records."""
    return store.root / "builds"


def build_record(store: SnapshotStore, setup_hash: str) -> dict[str, object] | None:
    """Return the build record of a setup hash: a running or failed build, or restores that failed since one."""
    try:
        record = json.loads((builds_dir(store) / f"{setup_hash}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("state") == "building" and not _alive(int(record.get("pid", 0))):
        return None
    return record


def write_build_record(store: SnapshotStore, setup_hash: str, **record: Any) -> None:
    """Replace the build record of a setup hash (private to the store's owner)."""
    path = builds_dir(store) / f"{setup_hash}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


# After the first rebuild for a stale restore, each rebuilt snapshot that fails the same way doubles the wait.
STALE_REBUILD_BACKOFF_S = 600.0
STALE_REBUILD_BACKOFF_MAX_S = 86400.0


def stale_rebuild_wait(restore_failures: int) -> float:
    """Seconds before the next automatic rebuild, once `restore_failures` restores failed on a changed input."""
    if restore_failures <= 1:
        return 0.0
    return min(STALE_REBUILD_BACKOFF_S * 2 ** (restore_failures - 2), STALE_REBUILD_BACKOFF_MAX_S)


def restore_failures_of(record: Mapping[str, Any] | None) -> int:
    """How many restores of this setup hash's rebuilt snapshots failed on a changed input (0 for a bad record)."""
    try:
        return max(int((record or {}).get("restore_failures", 0)), 0)
    except (TypeError, ValueError):
        return 0


def note_stale_restore(store: SnapshotStore, setup_hash: str, reason: str) -> bool:
    """Count a restore that failed because an input changed; tell whether an automatic rebuild may start now."""
    record = build_record(store, setup_hash) or {}
    if record.get("state") == "building":
        return True  # that build makes the new snapshot: joining it costs nothing
    failures = restore_failures_of(record) + 1
    wait = stale_rebuild_wait(failures)
    try:
        builds_dir(store).mkdir(mode=0o700, exist_ok=True)
        write_build_record(
            store, setup_hash, state="stale", error=reason, restore_failures=failures, retry_after=time.time() + wait
        )
    except OSError:
        return True  # no store of this user's own yet (a shared root's snapshot): its first build makes one
    return wait == 0


def forget_stale_restores(store: SnapshotStore, setup_hash: str) -> None:
    """Drop the count of failed restores once a snapshot of this setup hash restored."""
    record = build_record(store, setup_hash)
    if record and record.get("state") in {"stale", "rebuilt"}:
        with contextlib.suppress(OSError):  # counted again at the next failure: no reason to fail a start
            (builds_dir(store) / f"{setup_hash}.json").unlink(missing_ok=True)


def _stale_rebuild_held(record: Mapping[str, Any] | None) -> str | None:
    """Why no automatic rebuild starts now after rebuilt snapshots failed the same way (None: it may start)."""
    if not record or record.get("state") != "stale" or float(record.get("retry_after", 0)) <= time.time():
        return None
    until = time.strftime("%H:%M UTC", time.gmtime(float(record["retry_after"])))
    return (
        f"{record.get('restore_failures')} rebuilt snapshots failed to restore the same way: the next automatic "
        f"rebuild starts after {until} (or build it now: %snapshot build, or `jupyter snapkernel build`)"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


SETUP_CHANGED = "setup cells changed since the snapshot"


def snapshot_state(store: SnapshotStore, manifest: Manifest) -> tuple[str, list[str]]:
    """One snapshot's state here (ready, stale, or unusable once a restore of it failed for good) and why."""
    failure = store.unusable_reason(manifest.id)
    if failure is not None:
        return "unusable", [failure]
    reasons = store.mismatches(manifest)
    return ("stale" if reasons else "ready"), reasons


def snapshot_summary(store: SnapshotStore, manifest: Manifest) -> dict[str, Any]:
    """What `list --json` and the REST API say of one snapshot."""
    state, reasons = snapshot_state(store, manifest)
    return {
        "id": manifest.id,
        "state": state,
        "reasons": reasons,
        "setup_hash": manifest.key,
        "notebook": manifest.labels.get("notebook"),
        "created": manifest.created,
        "size_bytes": manifest.size_bytes,
        "rss_bytes": manifest.rss_bytes,
        "hardware": manifest.hardware,
        "environment": manifest.environment,
        "versions": manifest.versions,
        "labels": manifest.labels,
        "stale": reasons if state == "stale" else [],
    }


def superseded_snapshot(store: SnapshotStore, notebook: str | Path, setup_hash: str) -> Manifest | None:
    """The newest snapshot of this notebook taken with other setup cells than `setup_hash`."""
    resolved = str(Path(notebook).resolve())
    older = [m for m in store.list() if m.labels.get("notebook") == resolved and m.key != setup_hash]
    return older[-1] if older else None


def input_changes(
    manifest: Manifest, section: SetupSection, notebook: str | Path, environ: Mapping[str, str]
) -> list[str]:
    """Say which files and environment variables the snapshot's setup read have changed since (none: still fresh)."""
    base = Path(notebook).resolve().parent
    return changed_inputs(manifest.inputs, environ, section.ignore_inputs, base=base)


def user_stores(settings: SnapKernelSettings) -> list[SnapshotStore]:
    """This user's store, then the shared read-only ones (their restores work in the user's store)."""
    own = open_store(settings.user_store_root, verify=settings.verify)
    return [own, *(reading_store(root, own, verify=settings.verify) for root in settings.shared_roots)]


def notebook_state(
    stores: Sequence[SnapshotStore],
    section: SetupSection | None,
    notebook: str | Path,
    environ: Mapping[str, str] = os.environ,
) -> NotebookState:
    """Decide a notebook's snapshot state and what a kernel start does: the one answer every caller uses.

    `stores` is the user's own store first (builds and their records live there), then the shared roots.
    """
    if section is None:
        return NotebookState("none", reasons=["no setup cell is marked"], rebuild=False)
    setup_hash, own = section.setup_hash, stores[0]
    found = NotebookState("none", setup_hash, section=section)
    stale: list[tuple[Mismatch, SnapshotStore]] = []
    for store in stores:
        usable, mismatched = store.usable_and_stale(setup_hash)
        if usable is not None:
            changes = input_changes(usable, section, notebook, environ)
            if not changes:
                found = NotebookState(
                    "ready", setup_hash, usable, store=store, restorable=True, section=section,
                    in_shared_root=store is not own,
                )  # fmt: skip
                break
            mismatched = [Mismatch(usable, changes), *mismatched]
        stale += [(mismatch, store) for mismatch in mismatched]
    record = build_record(own, setup_hash)
    if record and record.get("state") == "building":
        found.state = "building"
        found.cold_reason = None if found.restorable else "no snapshot yet"
        return found
    if found.restorable:
        return found
    if record and record.get("state") == "failed" and record.get("fingerprint") == own.fingerprint_digest():
        # The same cells in the same environment would fail the same way: build again only when asked.
        error = str(record.get("error", ""))
        return NotebookState(
            "failed", setup_hash, reasons=[error], cold_reason=f"the last snapshot build failed: {error}",
            rebuild=False, section=section,
        )  # fmt: skip
    if stale:
        (mismatch, store), unusable = stale[0], stale[0][0].unusable
        held = None if unusable else _stale_rebuild_held(record)
        reasons = mismatch.reasons + ([held] if held else [])
        return NotebookState(
            "failed" if unusable else "stale", setup_hash, mismatch.manifest, reasons, store,
            cold_reason=reasons[0] if unusable else "stale: " + "; ".join(reasons),
            rebuild=not unusable and held is None, section=section, in_shared_root=store is not own,
        )  # fmt: skip
    older = superseded_snapshot(own, notebook, setup_hash)
    if older is not None:
        return NotebookState(
            "stale", setup_hash, older, [SETUP_CHANGED], own, cold_reason=f"stale: {SETUP_CHANGED}", section=section
        )
    found.cold_reason = "no snapshot yet"
    return found


def notebook_file_state(
    stores: Sequence[SnapshotStore], notebook: str | Path, environ: Mapping[str, str] = os.environ
) -> NotebookState:
    """The state of a notebook as saved on disk; raise NotebookError when it is not a valid notebook."""
    return notebook_state(stores, read_setup_section(notebook), notebook, environ)
