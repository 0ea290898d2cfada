"""What a start asks the registries an administrator trusts, when no local or shared snapshot matches: fetch the
match now (its pull is expected to be shorter than its setup), or in the background for the next start."""

from __future__ import annotations

from typing import TYPE_CHECKING

from snapkernel_engine import Manifest, SnapshotError, SnapshotStore

from ..config import SnapKernelSettings
from ..notebook.registries import fetch_in_background, fetch_now, fetch_running, find_in_registries, pull_into

if TYPE_CHECKING:
    from .start_plan import StartPlan

ASKED_IN = {"none", "stale"}  # no snapshot, or only ones that cannot restore here, and no build runs or failed


def fetch_for_start(settings: SnapKernelSettings, plan: StartPlan) -> bool:
    """Ask the trusted registries for the plan's setup when no store holds a snapshot to restore; say in
    `plan.fetched` what they gave. True: a snapshot was fetched into the user's store now (look again).
    Never fails a start: whatever goes wrong is said in `plan.fetched`, and the start goes on without it."""
    try:
        return _fetch_for_start(settings, plan)
    except Exception as error:  # a registry, a disk or a process that failed in a way not foreseen
        plan.fetched = f"asking the registries failed: {error or type(error).__name__}"
        return False


def _fetch_for_start(settings: SnapKernelSettings, plan: StartPlan) -> bool:
    """fetch_for_start, which may raise."""
    state, own = plan.state, plan.own_store
    if not settings.registries or state is None or own is None or state.section is None:
        return False
    if state.restorable or state.state not in ASKED_IN:
        return False
    key = state.section.setup_hash
    if fetch_running(own, key):
        state.rebuild = False  # the fetch brings it: a build would make a second one
        plan.fetched = "a fetch of its snapshot from a registry runs in the background: the next start restores it"
        return False
    match = find_in_registries(settings.registries, key, own)
    if match.found is None:
        plan.fetched = "; ".join(match.passed_over) or None
        return False
    found = match.found
    if _in_store(own, found.artifact.snapshot_id):
        return False  # fetched before, and it cannot restore here: the state says why, and a build follows
    too_large = quota_refusal(settings, found.artifact.chain_size)
    if too_large is not None:
        plan.fetched = f"{found.reference} is not fetched: {too_large}"
        return False
    now, why = fetch_now(found, own)
    if not now:
        fetch_in_background(own, found, key)
        state.rebuild = False
        plan.fetched = f"fetching {found.reference} in the background, as {why}: the next start restores it"
        return False
    try:
        pulled = pull_into(own, found, key)
    except (SnapshotError, OSError) as error:
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        plan.fetched = f"fetching {found.reference} failed: {cause}"
        return False
    plan.fetched = f"fetched {found.reference} before the start in {pulled.seconds:.1f} s, as {why}"
    keep_after_pull(settings, own, pulled.snapshot)
    return True


def _in_store(store: SnapshotStore, snapshot_id: str) -> bool:
    """Whether the store holds a snapshot of this id (usable here or not)."""
    try:
        store.get(snapshot_id)
    except SnapshotError:
        return False
    return True


def quota_refusal(settings: SnapKernelSettings, size: int) -> str | None:
    """Why a snapshot of `size` bytes (with its restore points) is not fetched: larger than the user's quota."""
    if settings.quota_bytes and size > settings.quota_bytes:
        return f"its {size / 1e6:.0f} MB exceed your snapshot quota of {settings.quota_bytes / 1e6:.0f} MB"
    return None


def keep_after_pull(settings: SnapKernelSettings, store: SnapshotStore, manifest: Manifest) -> str | None:
    """Keep the store within its quota and count once a fetched snapshot is in it, as after a build; a line saying
    what went wrong (None: nothing)."""
    from ..notebook.builder import keep_within_limits

    try:
        keep_within_limits(store, manifest, settings.quota_bytes, settings.max_snapshots)
    except (SnapshotError, OSError) as error:
        return f"store housekeeping after the fetch failed: {error}"
    return None
