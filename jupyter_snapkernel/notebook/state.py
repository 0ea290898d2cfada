"""The snapshot state of a notebook: none, queued, building, ready, partial, stale or failed."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from snapkernel_engine import Manifest, SnapshotStore
from snapkernel_engine.inputs import changed_inputs
from snapkernel_engine.store import BUILDS, Mismatch

from ..config import SnapKernelSettings
from ..paths import open_store, reading_store
from .setup_section import SetupSection, read_setup_section


@dataclass
class NotebookState:
    """What the stores hold for one notebook's current setup section, and what a kernel start does with it."""

    state: str  # none | queued | building | ready | partial | stale | failed
    setup_hash: str | None = None
    snapshot: Manifest | None = None
    reasons: list[str] = field(default_factory=list)
    store: SnapshotStore | None = None  # the store that holds `snapshot`
    restorable: bool = False  # `snapshot` is usable: a kernel start restores it
    cold_reason: str | None = None  # why a kernel start is cold (None: restored, or no setup section)
    rebuild: bool = True  # whether a cold start may build the snapshot (False: it would fail the same way)
    section: SetupSection | None = None
    in_shared_root: bool = False  # `store` is an administrator's shared root, not the user's own store
    queue_ahead: int | None = None  # queued: how many queued builds of its server run first
    build: str | None = None  # queued or building in the asking server: the id of its build there
    # `snapshot` is a restore point inside the setup: a start restores it, and the setup cells after it run
    # again (how many setup cells it covers; None: the whole setup, or nothing restorable)
    restored_cells: int | None = None


PointMark = Literal["current", "stale"]


@dataclass(frozen=True)
class RestorePoint:
    """A snapshot a start could restore: the one after the first `cells` setup cells, and its store."""

    cells: int
    manifest: Manifest
    store: SnapshotStore


@dataclass(frozen=True)
class RunningBuild:
    """A build of a setup section that runs or waits in a queue, as far as a notebook's state tells it."""

    state: str  # queued | building
    queue_ahead: int | None = None  # queued: how many queued builds of its server run first
    id: str | None = None  # the build's id in the asking server (None: another process's build)


class ServerBuilds(Protocol):
    """A server's builds in memory (background_builds.BackgroundBuilds): they know a build before its records do."""

    def running_build(self, setup_hash: str) -> RunningBuild | None:
        """The server's queued or running build of a setup section (None: it has none); callable from any thread."""


def builds_dir(store: SnapshotStore) -> Path:
    """Where running and failed builds leave their records."""
    return store.root / BUILDS


def build_file(store: SnapshotStore, setup_hash: str, kind: str = "json") -> Path:
    """The one path of a setup hash's build record (`json`) or build lock (`lock`)."""
    return builds_dir(store) / f"{setup_hash}.{kind}"


def remove_build_record(store: SnapshotStore, setup_hash: str) -> None:
    """Remove a setup hash's build record, if there is one."""
    build_file(store, setup_hash).unlink(missing_ok=True)


def build_record(store: SnapshotStore, setup_hash: str) -> dict[str, object] | None:
    """Return the build record of a setup hash: a running or failed build, or restores that failed since one."""
    try:
        record = json.loads(build_file(store, setup_hash).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("state") == "building" and not _alive(int(record.get("pid", 0))):
        return None
    return record


def queue_path(store: SnapshotStore, pid: int) -> Path:
    """Where the server of process `pid` lists, in order, the setup hashes its build queue holds for this store."""
    return builds_dir(store) / f"queue-{pid}.json"


def queued_ahead(store: SnapshotStore, setup_hash: str) -> int | None:
    """How many queued builds a live server runs before its queued build of `setup_hash` (None: none is queued)."""
    try:
        paths = list(builds_dir(store).glob("queue-*.json"))
    except OSError:
        return None
    for path in paths:
        try:
            record = json.loads(path.read_text())
            pid, queue = int(record["pid"]), [str(entry) for entry in record["queue"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if setup_hash in queue and _alive(pid):
            return queue.index(setup_hash)
    return None


def write_private_json(path: Path, record: dict[str, Any]) -> None:
    """Replace a file of the builds folder at once, readable by its owner only (the folder is made if need be):
    the one writer of build and queue records."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def write_build_record(store: SnapshotStore, setup_hash: str, **record: Any) -> None:
    """Replace the build record of a setup hash (private to the store's owner)."""
    write_private_json(build_file(store, setup_hash), record)


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
            remove_build_record(store, setup_hash)


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
QUOTA_SETTING = "SnapKernelSettings.quota_bytes"


def quota_problem(size_bytes: int, quota_bytes: int) -> str | None:
    """Why a snapshot of `size_bytes` cannot be kept within the quota on its own (None: it fits, or no quota)."""
    if quota_bytes <= 0 or size_bytes <= quota_bytes:
        return None
    return (
        f"the snapshot with its restore points ({_megabytes(size_bytes)}) is larger than the quota "
        f"({_megabytes(quota_bytes)}) ({QUOTA_SETTING}): raise the quota, or make the setup cells hold less memory"
    )


def _megabytes(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes < 10e6 else f"{size_bytes / 1e6:.0f} MB"


def snapshot_summary(store: SnapshotStore, manifest: Manifest) -> dict[str, Any]:
    """What `list --json` and the REST API say of one snapshot."""
    condition = store.condition(manifest)
    return {
        "id": manifest.id,
        "state": condition.state,
        "reasons": condition.reasons,
        "setup_hash": manifest.key,
        "notebook": manifest.labels.get("notebook"),
        "created": manifest.created,
        "size_bytes": manifest.size_bytes,
        "rss_bytes": manifest.rss_bytes,
        "hardware": manifest.hardware,
        "environment": manifest.environment,
        "versions": manifest.versions,
        "labels": manifest.labels,
        "stale": condition.reasons if condition.state == "stale" else [],
        "parent": manifest.parent,  # the restore point it is incremental to (None: a full image)
    }


def superseded_snapshot(
    stores: Sequence[SnapshotStore], own: SnapshotStore, notebook: str | Path, setup_hash: str
) -> tuple[Manifest, SnapshotStore] | None:
    """The newest snapshot this notebook had before its setup cells became `setup_hash`, and its store.

    In the user's own store that is a snapshot built for this very file; in a shared root, one built
    for a notebook of the same name (the course's copy that the user's notebook was made from).
    """
    resolved = Path(notebook).resolve()
    for store in stores:
        older = [
            manifest for manifest in store.list()
            if manifest.key != setup_hash and ends_setup(manifest) and _built_for(manifest, resolved, store is own)
        ]  # fmt: skip
        if older:
            return older[-1], store
    return None


def ends_setup(manifest: Manifest) -> bool:
    """Whether a snapshot is the one at the end of its setup section (not a restore point inside it)."""
    return manifest.labels.get("setup_cells", manifest.labels.get("cells")) == manifest.labels.get("cells")


def _built_for(manifest: Manifest, notebook: Path, same_file: bool) -> bool:
    """Whether a snapshot was built for `notebook` (`same_file`), or for a notebook of the same name."""
    label = manifest.labels.get("notebook")
    if not label:
        return False
    return label == str(notebook) if same_file else Path(label).name == notebook.name


def input_changes(
    manifest: Manifest, section: SetupSection, notebook: str | Path, environ: Mapping[str, str]
) -> list[str]:
    """Say which files and environment variables the snapshot's setup read have changed since, or differ in this
    notebook's folder from those a snapshot built in another folder read (none: still fresh)."""
    base = Path(notebook).resolve().parent
    changes = changed_inputs(manifest.inputs, environ, section.ignore_inputs, base=base)
    built_for = manifest.labels.get("notebook")
    # Made before snapshots recorded their folder: the files it read may be another folder's data.
    legacy = "folder" not in manifest.inputs and bool(manifest.inputs.get("files"))
    if legacy and built_for and Path(built_for).resolve().parent != base:
        changes.append(f"it was built for {built_for}, and does not record which of its inputs are that folder's")
    return changes


def user_stores(settings: SnapKernelSettings) -> list[SnapshotStore]:
    """This user's store, then the shared read-only ones (their restores work in the user's store)."""
    own = open_store(settings.user_store_root, verify=settings.verify)
    owners = settings.shared_root_owners
    return [own, *(reading_store(root, own, settings.verify, owners) for root in settings.shared_roots)]


SHARED_ROOT_ADVICE = "an administrator can name its owner in SnapKernelSettings.shared_root_owners"
OWN_STORE_ADVICE = (
    "snapkernel restores only what no one else could have written: use a folder of your own (SNAPKERNEL_STORE)"
)


def refusal(store: SnapshotStore, own: bool) -> str | None:
    """Why a kernel start may not use a store (None: it may), in one line that names no path."""
    reason = store.untrusted_reason()
    if reason is not None:
        what, advice = ("your snapshot store", OWN_STORE_ADVICE) if own else ("a shared root", SHARED_ROOT_ADVICE)
        return f"{what} is not trusted: {reason}; {advice}"
    if own:
        return store.not_a_store_reason()
    return None


def refusals(stores: Sequence[SnapshotStore]) -> dict[SnapshotStore, str | None]:
    """Why a start may not use each of the user's stores (the own one first), None for those it may use."""
    return {store: refusal(store, store is stores[0]) for store in stores}


def _search(
    stores: Sequence[SnapshotStore],
    own: SnapshotStore,
    section: SetupSection,
    notebook: str | Path,
    environ: Mapping[str, str],
) -> tuple[NotebookState, list[tuple[Mismatch, SnapshotStore]]]:
    """The first snapshot of the section that a start may restore (else state none), and the stale ones before it."""
    stale: list[tuple[Mismatch, SnapshotStore]] = []
    for store in stores:
        usable, mismatched = store.usable_and_stale(
            section.setup_hash, lambda manifest: input_changes(manifest, section, notebook, environ)
        )
        if usable is not None:
            ready = NotebookState(
                "ready", section.setup_hash, usable, store=store, restorable=True, section=section,
                in_shared_root=store is not own,
            )  # fmt: skip
            return ready, stale
        stale += [(mismatch, store) for mismatch in mismatched]
    return NotebookState("none", section.setup_hash, section=section), stale


def notebook_state(
    stores: Sequence[SnapshotStore],
    section: SetupSection | None,
    notebook: str | Path,
    environ: Mapping[str, str] = os.environ,
    quota_bytes: int | None = None,
    builds: ServerBuilds | None = None,
) -> NotebookState:
    """Decide a notebook's snapshot state and what a kernel start does: the one answer every caller uses.

    `stores` is the user's own store first (builds and their records live there), then the shared roots.
    `quota_bytes` is the quota in force (None: not known here), so that a snapshot found too large for
    another quota is built again. `builds` are the asking server's own (None: not in a server). Where no
    snapshot of the whole setup can be restored, a start restores the latest restore point inside it
    whose cells and inputs still match (state `partial`, or queued or building while its rest is built).
    """
    if section is None:
        return NotebookState("none", reasons=["no setup cell is marked"], rebuild=False)
    own = stores[0]
    refused = refusals(stores)
    trusted = [store for store in stores if refused[store] is None]  # only these are restored from or built into
    state = _whole_setup_state(trusted, own, refused, section, notebook, environ, quota_bytes, builds)
    if state.restorable:
        return state
    points = restore_points(trusted, section, notebook, environ)
    inside = [point for cells, point in points.items() if cells < len(section.cells)]
    return _from_restore_point(state, inside[-1], section, own) if inside else state


def _from_restore_point(
    state: NotebookState, point: RestorePoint, section: SetupSection, own: SnapshotStore
) -> NotebookState:
    """The state `state` of the whole setup, once a start restores the restore point `point` inside it."""
    total, cells = len(section.cells), point.cells
    rest = f"cell {total}" if cells + 1 == total else f"cells {cells + 1}-{total}"
    return dataclasses.replace(
        state,
        state=state.state if state.state in {"queued", "building"} else "partial",
        snapshot=point.manifest,
        store=point.store,
        restorable=True,
        cold_reason=None,
        restored_cells=cells,
        reasons=[f"restores up to setup cell {cells} of {total}; {rest} run again", *state.reasons],
        in_shared_root=point.store is not own,
    )


def restore_points(
    stores: Sequence[SnapshotStore], section: SetupSection, notebook: str | Path, environ: Mapping[str, str]
) -> dict[int, RestorePoint]:
    """The restore points of a setup that a start could restore now, by how many setup cells each covers (in
    that order): for each, the newest snapshot of the first store with one whose cells and inputs match."""
    keys = {section.prefix_hash(cells): cells for cells in range(1, len(section.cells) + 1)}
    found: dict[int, RestorePoint] = {}
    for store in stores:
        for manifest in reversed(store.list()):
            cells = keys.get(manifest.key)
            if cells is None or cells in found:
                continue
            condition = store.condition(manifest, lambda it: input_changes(it, section, notebook, environ))
            if condition.state == "ready":
                found[cells] = RestorePoint(cells, manifest, store)
    return dict(sorted(found.items()))


def point_markers(
    stores: Sequence[SnapshotStore], section: SetupSection, notebook: str | Path, environ: Mapping[str, str]
) -> dict[int, PointMark]:
    """A notebook's restore points by how many setup cells each covers: `current` where a start could restore
    one, `stale` where one was built for this notebook but its cells or inputs changed since."""
    refused = refusals(stores)
    trusted = [store for store in stores if refused[store] is None]
    markers: dict[int, PointMark] = {cells: "current" for cells in restore_points(trusted, section, notebook, environ)}
    resolved = str(Path(notebook).resolve())
    for manifest in stores[0].list() if stores and refused[stores[0]] is None else []:
        cells = int(manifest.labels.get("cells", 0)) if manifest.labels.get("notebook") == resolved else 0
        if 0 < cells <= len(section.cells):
            markers.setdefault(cells, "stale")
    return dict(sorted(markers.items()))


def _whole_setup_state(
    trusted: Sequence[SnapshotStore],
    own: SnapshotStore,
    refused: Mapping[SnapshotStore, str | None],
    section: SetupSection,
    notebook: str | Path,
    environ: Mapping[str, str],
    quota_bytes: int | None,
    builds: ServerBuilds | None,
) -> NotebookState:
    """The state of the snapshot of the whole setup section (notebook_state without restore points)."""
    setup_hash = section.setup_hash
    found, stale = _search(trusted, own, section, notebook, environ)
    own_refusal = refused[own]
    if own_refusal is not None and not found.restorable:  # nothing of it is read, and nothing built into it
        return NotebookState(
            "failed", setup_hash, reasons=[own_refusal], cold_reason=own_refusal, rebuild=False, section=section
        )
    record = build_record(own, setup_hash) if own_refusal is None else None
    running = running_build(own, setup_hash, record, builds) if own_refusal is None else None
    if running is not None:  # a build runs, or waits in a server's queue
        found.state, found.queue_ahead, found.build = running.state, running.queue_ahead, running.id
        found.cold_reason = None if found.restorable else "no snapshot yet"
        return found
    if found.restorable:
        return found
    error = _recurring_failure(record, own, quota_bytes)
    if error is not None:
        # The same cells in the same environment would fail the same way: build again only when asked.
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
    superseded = superseded_snapshot(trusted, own, notebook, setup_hash)
    if superseded is not None:
        older, store = superseded
        return NotebookState(
            "stale", setup_hash, older, [SETUP_CHANGED], store, cold_reason=f"stale: {SETUP_CHANGED}",
            section=section, in_shared_root=store is not own,
        )  # fmt: skip
    found.reasons = [reason for reason in refused.values() if reason is not None]
    found.cold_reason = "; ".join(["no snapshot yet", *found.reasons])
    return found


def running_build(
    own: SnapshotStore, setup_hash: str, record: Mapping[str, Any] | None, builds: ServerBuilds | None
) -> RunningBuild | None:
    """Whether a build of the setup section runs or waits (None: neither): the one answer, for notebook_state.

    The asking server's own builds first (its queue is written to disk after the fact), then the build
    record (`record`, read from `own`) and the queue records of every process building into `own`.
    """
    mine = builds.running_build(setup_hash) if builds is not None else None
    if mine is not None:
        return mine
    if record and record.get("state") == "building":
        return RunningBuild("building")
    ahead = queued_ahead(own, setup_hash)
    return None if ahead is None else RunningBuild("queued", ahead)


def _recurring_failure(record: dict[str, object] | None, own: SnapshotStore, quota_bytes: int | None) -> str | None:
    """The error of a failed build that would fail again: same environment and, for a quota failure, same quota."""
    if not record or record.get("state") != "failed" or record.get("fingerprint") != own.fingerprint_digest():
        return None
    if quota_bytes is not None and record.get("quota_bytes", quota_bytes) != quota_bytes:
        return None
    return str(record.get("error", ""))


def notebook_file_state(
    stores: Sequence[SnapshotStore],
    notebook: str | Path,
    environ: Mapping[str, str] = os.environ,
    quota_bytes: int | None = None,
    builds: ServerBuilds | None = None,
) -> NotebookState:
    """The state of a notebook as saved on disk; raise NotebookError when it is not a valid notebook."""
    return notebook_state(stores, read_setup_section(notebook), notebook, environ, quota_bytes, builds)
