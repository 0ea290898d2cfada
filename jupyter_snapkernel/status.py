"""The snapshot state of a notebook: none, building, ready, stale or failed."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import Manifest, SnapshotStore
from engine.inputs import changed_inputs
from engine.store import Mismatch

from .setup_section import SetupSection, read_setup_section


@dataclass
class NotebookState:
    """What the store holds for one notebook's current setup section."""

    state: str  # none | building | ready | stale | failed
    setup_hash: str | None = None
    snapshot: Manifest | None = None
    reasons: list[str] = field(default_factory=list)


def builds_dir(store: SnapshotStore) -> Path:
    """Where running and failed builds leave their records."""
    return store.root / "builds"


def build_record(store: SnapshotStore, setup_hash: str) -> dict[str, object] | None:
    """Return the record of a running or failed build for a setup hash."""
    try:
        record = json.loads((builds_dir(store) / f"{setup_hash}.json").read_text())
    except (OSError, ValueError):
        return None
    if record.get("state") == "building" and not _alive(int(record.get("pid", 0))):
        return None
    return record


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


def notebook_state(store: SnapshotStore, notebook: str | Path) -> NotebookState:
    """Work out the snapshot state of a notebook on disk; raise NotebookError when it is not a valid notebook."""
    section = read_setup_section(notebook)
    if section is None:
        return NotebookState("none", reasons=["no setup cell is marked"])
    usable, mismatched = store.lookup(section.setup_hash)
    if usable is not None and (changes := input_changes(usable, section, notebook, os.environ)):
        mismatched, usable = [Mismatch(usable, changes), *mismatched], None
    record = build_record(store, section.setup_hash)
    if record and record.get("state") == "building":
        return NotebookState("building", section.setup_hash, usable)
    if usable is not None:
        return NotebookState("ready", section.setup_hash, usable)
    if record and record.get("state") == "failed":
        return NotebookState("failed", section.setup_hash, reasons=[str(record.get("error", ""))])
    if mismatched and mismatched[0].unusable:
        return NotebookState("failed", section.setup_hash, mismatched[0].manifest, mismatched[0].reasons)
    if mismatched:
        return NotebookState("stale", section.setup_hash, mismatched[0].manifest, mismatched[0].reasons)
    older = superseded_snapshot(store, notebook, section.setup_hash)
    if older is not None:
        return NotebookState("stale", section.setup_hash, older, [SETUP_CHANGED])
    return NotebookState("none", section.setup_hash)
