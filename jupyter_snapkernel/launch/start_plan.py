"""The one decision of every launcher (the provisioner, the kernelspec's own launcher): restore, or start cold and
why; and what each kind of kernel is told of its start."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapkernel_engine import Manifest, SnapshotStore
from snapkernel_engine.diagnostics import snapshot_blocker
from snapkernel_engine.failures import RestoreFailure, classify_restore_failure
from snapkernel_engine.messages import ResumeRequest
from snapkernel_engine.restore import LAZY_NEEDS_ROOT, lazy_restore_supported

from .. import env_names
from ..config import SnapKernelSettings, env_flag
from ..notebook.binding import NO_NOTEBOOK, NotebookBinding
from ..notebook.setup_section import NotebookError, setup_section_of
from ..notebook.state import NotebookState, note_stale_restore, notebook_file_state, notebook_state, user_stores
from .background_builds import background_builds
from .registry_fetch import fetch_for_start


@dataclass
class StartPlan:
    """What a launcher (the provisioner, or the kernelspec's own launcher) decided for one launch."""

    binding: NotebookBinding | None = None  # the notebook, and what named it (None: nothing named one)
    state: NotebookState | None = None  # what the stores hold for the notebook (None: no snapshot was looked for)
    why_cold: str | None = None  # why no snapshot was looked for, or why its restore failed (else: the state's)
    own_store: SnapshotStore | None = None  # the user's store, where builds publish
    # The saved notebook's state, where the cells that run differ from it (papermill's parameters): builds
    # follow the notebook as saved, not each run's parameters (None: `state` is the saved notebook's).
    saved_state: NotebookState | None = None
    say_why_first: bool = False  # the kernel says why it started cold with its first cell (no frontend shows it)
    fetched: str | None = None  # what a trusted registry gave this start (registry_fetch.py; None: not asked)

    @property
    def notebook(self) -> Path | None:
        """The notebook this launch is for (None: nothing named one)."""
        return self.binding.notebook if self.binding is not None else None

    @property
    def snapshot(self) -> Manifest | None:
        """The snapshot this launch restores (None: it starts cold)."""
        return self.state.snapshot if self.state is not None and self.state.restorable else None

    @property
    def reason(self) -> str | None:
        """Why the kernel starts cold, with what a registry gave it (None: it restores, or there is nothing to
        restore from)."""
        reason = self.why_cold or (self.state.cold_reason if self.state is not None else None)
        return f"{reason}; {self.fetched}" if reason and self.fetched and self.snapshot is None else reason

    @property
    def to_build(self) -> NotebookState | None:
        """The state whose snapshot a cold or partial start of this plan builds in the background (None: none)."""
        state = self.saved_state or self.state
        if state is None or state.section is None or not state.rebuild:
            return None
        # A snapshot of the whole setup that stands (restored now, or the saved notebook's, untried) needs none.
        tried_and_failed = self.saved_state is None and self.why_cold is not None
        stands = state.restorable and state.restored_cells is None and not tried_and_failed
        return None if stands else state


def plan_start(
    settings: SnapKernelSettings,
    kernel_name: str,
    env: dict[str, str],
    cwd: str | None,
    binding: NotebookBinding | None,
    executing: dict[str, Any] | None = None,
) -> StartPlan:
    """Decide between restoring and a cold start, with the reason for a cold one (reads the disk): the one
    decision of every launcher. `executing` is the notebook as it will run, where a client holds a copy of
    its own (papermill's, with parameters): its cells decide what can be restored."""
    if binding is None:
        return StartPlan(why_cold=NO_NOTEBOOK, say_why_first=True)
    notebook = binding.notebook
    refused = _refusal(settings, kernel_name, env)
    if refused is not None:
        return StartPlan(binding, why_cold=refused)
    if notebook.suffix != ".ipynb" or not os.path.lexists(notebook):  # a session of no notebook file
        return StartPlan(binding)
    stores = user_stores(settings)
    plan = StartPlan(binding, own_store=stores[0])

    def look() -> None:
        """Find what the stores hold for the notebook as saved, and as it will run."""
        plan.state = notebook_file_state(stores, notebook, env, settings.quota_bytes, background_builds)
        section = setup_section_of(executing) if executing is not None else None
        if plan.state.section is not None and section is not None and section != plan.state.section:
            plan.saved_state = plan.state
            plan.state = notebook_state(stores, section, notebook, env, settings.quota_bytes, background_builds)

    try:
        look()
        if fetch_for_start(settings, plan):  # a trusted registry's snapshot is in the user's store now
            look()
    except NotebookError as error:  # unreadable, not JSON, or not a valid notebook: the kernel starts cold
        why = error.problem if error.unreadable else str(error)
        return StartPlan(binding, why_cold=f"cannot read the notebook: {why}")
    return plan


def _refusal(settings: SnapKernelSettings, kernel_name: str, env: dict[str, str]) -> str | None:
    """Why this launch looks for no snapshot at all (None: it looks)."""
    if not settings.enabled:
        return "snapshots are disabled (SnapKernelSettings.enabled)"
    blocker = snapshot_blocker()
    if blocker:
        return f"snapshots are unavailable on this server: {blocker}"
    if not settings.allows_kernelspec(kernel_name):
        return f"kernelspec {kernel_name!r} is not allowed snapshots"
    if env_flag(env_names.COLD, False, env):
        return "cold start requested"
    return None


def settle_failed_restore(plan: StartPlan, snapshot: Manifest, store: SnapshotStore, failure: RestoreFailure) -> None:
    """Keep, rebuild or give up the snapshot whose restore failed, according to the cause (reads the disk)."""
    assert plan.state is not None, "only a planned snapshot is restored"
    if failure.kind == "transient":
        plan.state.rebuild = False  # the next start tries this snapshot again: a rebuild would make the same one
    elif failure.kind == "stale":
        store.mark_stale(snapshot.id, failure.cause)
        # One rebuild now; rebuilt snapshots that fail the same way wait longer each time.
        own = plan.own_store
        plan.state.rebuild = own is not None and note_stale_restore(own, snapshot.key, failure.cause)
    else:
        # The same snapshot would fail the same way: never offer it again, and do not rebuild it in a loop
        # (a rebuild of the same cells would carry the same cause).
        store.mark_unusable(snapshot.id, failure.cause)
        plan.state.rebuild = False


def fall_back_to_cold(
    plan: StartPlan, error: Exception, log: logging.Logger | logging.LoggerAdapter[logging.Logger]
) -> None:
    """Record why the plan's restore failed: the plan then starts cold saying so, and its snapshot is kept, rebuilt
    or given up according to the cause (writes the disk: run it off a server's event loop)."""
    snapshot, state = plan.snapshot, plan.state
    assert snapshot is not None and state is not None and state.store is not None, "only a planned snapshot fails"
    failure = classify_restore_failure(error)
    plan.why_cold = failure.reason(snapshot.id, error)
    log.warning("snapkernel: %s; starting cold", plan.why_cold)
    try:
        settle_failed_restore(plan, snapshot, state.store, failure)
    except Exception as bookkeeping:  # the kernel starts cold all the same
        log.warning("snapkernel: could not record the failed restore: %s", bookkeeping)


def lazy_restores(settings: SnapKernelSettings, log: logging.Logger | logging.LoggerAdapter[logging.Logger]) -> bool:
    """Whether restores load memory lazily: asked for, and possible here (root mode only)."""
    if not settings.lazy_restore:
        return False
    if lazy_restore_supported():
        return True
    log.warning("snapkernel: lazy_restore is on, but %s: restoring eagerly", LAZY_NEEDS_ROOT)
    return False


def cold_start_note(plan: StartPlan, say_why_first: bool = False) -> str:
    """What a cold kernel is told of its start (env_names.START): why it is cold, its notebook and what named it,
    and whether its first executed cell says why (`say_why_first`, or the plan's own wish)."""
    binding = plan.binding
    return json.dumps(
        {
            "reason": plan.reason,
            "notebook": str(binding.notebook) if binding else "",
            "named_by": binding.named_by if binding else "",
            "say_why_first": plan.say_why_first or say_why_first,
        }
    )


def resume_request(
    connection_file: str, manifest: Manifest, kwargs: dict[str, Any], started: float, binding: NotebookBinding | None
) -> ResumeRequest:
    """What a restored kernel is handed: this launch's connection file, environment, working folder and notebook."""
    return ResumeRequest(
        connection_file=connection_file,
        env=kwargs.get("env") or dict(os.environ),
        cwd=str(kwargs.get("cwd") or os.getcwd()),
        snapshot=manifest.id,
        restore_started=started,
        setup_s=float(manifest.labels.get("setup_s", 0)),
        notebook=str(binding.notebook) if binding else "",
        notebook_named_by=binding.named_by if binding else "",
    )
