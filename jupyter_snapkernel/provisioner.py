"""Kernel provisioner that restores a notebook's kernel from its snapshot, or starts it cold."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner

from engine import (
    Manifest,
    RestoredTree,
    RestoreTimeout,
    SnapshotBusy,
    SnapshotError,
    SnapshotNotFound,
    SnapshotStore,
)
from engine.diagnostics import snapshot_blocker
from engine.restore import LAZY_NEEDS_ROOT, lazy_restore_supported
from engine.store import Mismatch

from .builder import BuildCancelled, notebook_gpu_state
from .builds import build_manager
from .config import SnapKernelSettings
from .kernelapp import START_ENV_VAR
from .paths import STORE_ENV_VAR, open_store, reading_store
from .setup_section import NotebookError, SetupSection, read_setup_section
from .spares import restore_waiting, spare_pool
from .status import SETUP_CHANGED, build_record, input_changes, superseded_snapshot

COLD_ENV_VAR = "SNAPKERNEL_COLD"
# Restore failures that may not recur (the machine was busy, a spare kernel died): the snapshot stays usable.
TRANSIENT_FAILURES = (RestoreTimeout, SnapshotBusy, SnapshotNotFound)
SPARES_ENV_VAR = "SNAPKERNEL_SPARE_KERNELS"  # read by SnapKernelSettings


@dataclass
class StartPlan:
    """What the provisioner decided for one launch."""

    notebook: Path | None = None
    section: SetupSection | None = None
    snapshot: Manifest | None = None
    reason: str | None = None
    store: SnapshotStore | None = None
    build: bool = True  # whether a cold start of this plan may build the snapshot in the background


class RestoredKernelProcess:
    """The Popen-like view of a restored tree that LocalProvisioner expects."""

    stdin = stdout = stderr = None

    def __init__(self, tree: RestoredTree) -> None:
        self.tree = tree
        self.pid = tree.pid

    def poll(self) -> int | None:
        return self.tree.poll()

    def wait(self, timeout: float | None = None) -> int:
        return self.tree.wait(timeout)

    def send_signal(self, signum: int) -> None:
        self.tree.send_signal(signum)

    def terminate(self) -> None:
        self.tree.terminate()

    def kill(self) -> None:
        self.tree.kill()


class SnapKernelProvisioner(LocalProvisioner):
    """Restores `snapkernel` kernels from snapshots of their notebook's setup cells."""

    @property
    def settings(self) -> SnapKernelSettings:
        """The administrator's settings (``c.SnapKernelSettings``), read through this server's config."""
        if not hasattr(self, "_settings"):
            self._settings = SnapKernelSettings(parent=self)
        return self._settings

    @property
    def store(self) -> SnapshotStore:
        """This user's store."""
        return open_store(self.settings.user_store_root, verify=self.settings.verify)

    def stores(self) -> list[SnapshotStore]:
        """This user's store, then the shared read-only ones (their restores work in the user's store)."""
        own = self.store
        shared = [reading_store(root, own, verify=self.settings.verify) for root in self.settings.shared_roots]
        return [own, *shared]

    def plan(self, env: dict[str, str], cwd: str | None) -> StartPlan:
        """Decide between restoring and a cold start, with the reason for a cold one."""
        session_name = env.get("JPY_SESSION_NAME")
        if not session_name:
            return StartPlan(reason=None)
        if not self.settings.enabled:
            return StartPlan(notebook=Path(session_name), reason="snapshots are disabled (SnapKernelSettings.enabled)")
        blocker = snapshot_blocker()
        if blocker:
            return StartPlan(notebook=Path(session_name), reason=f"snapshots are unavailable on this server: {blocker}")
        kernel_name = getattr(self.parent, "kernel_name", "snapkernel")
        if kernel_name not in self.settings.allowed_kernelspecs:
            return StartPlan(notebook=Path(session_name), reason=f"kernelspec {kernel_name!r} is not allowed snapshots")
        if env.get(COLD_ENV_VAR, "").lower() in {"1", "true", "yes"}:
            return StartPlan(notebook=Path(session_name), reason="cold start requested")
        notebook = Path(session_name)
        if not notebook.is_absolute():
            notebook = Path(cwd or ".") / notebook.name
        if notebook.suffix != ".ipynb" or not os.path.lexists(notebook):  # a session of no notebook file
            return StartPlan(notebook=notebook, reason=None)
        try:
            section = read_setup_section(notebook)
        except NotebookError as error:  # unreadable, not JSON, or not a valid notebook: the kernel starts cold
            why = error.problem if error.unreadable else str(error)
            return StartPlan(notebook=notebook, reason=f"cannot read the notebook: {why}")
        if section is None:
            return StartPlan(notebook=notebook)
        stale: list[Any] = []
        for store in self.stores():
            usable, mismatched = store.lookup(section.setup_hash)
            if usable is not None:
                changes = input_changes(usable, section, notebook, env)
                if not changes:
                    return StartPlan(notebook, section, usable, store=store)
                mismatched = [Mismatch(usable, changes), *mismatched]
            stale += mismatched
        if stale and stale[0].unusable:
            return StartPlan(notebook, section, reason=stale[0].reasons[0], build=False)
        if stale:
            return StartPlan(notebook, section, reason="stale: " + "; ".join(stale[0].reasons))
        if superseded_snapshot(self.store, notebook, section.setup_hash) is not None:
            return StartPlan(notebook, section, reason=f"stale: {SETUP_CHANGED}")
        failed = build_record(self.store, section.setup_hash)
        if failed and failed.get("state") == "failed" and failed.get("fingerprint") == self.store.fingerprint_digest():
            # The same cells in the same environment would fail the same way: build again only when asked.
            return StartPlan(
                notebook, section, reason=f"the last snapshot build failed: {failed.get('error')}", build=False
            )
        return StartPlan(notebook, section, reason="no snapshot yet")

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs.setdefault("env", dict(os.environ))
        self.start_plan = await asyncio.to_thread(self.plan, env, kwargs.get("cwd"))
        env[STORE_ENV_VAR] = str(self.settings.user_store_root)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        plan: StartPlan = getattr(self, "start_plan", StartPlan())
        started = time.time()
        if plan.snapshot is not None:
            try:
                info = await self._restore(plan.snapshot, plan.store or self.store, kwargs)
                self.start_report = {
                    "start": "restored",
                    "snapshot": plan.snapshot.id,
                    "reason": None,
                    "restore_s": round(time.time() - started, 3),
                    "setup_s": float(plan.snapshot.labels.get("setup_s", 0)),
                    "started": started,
                }
                return info
            except Exception as error:
                plan.reason = f"restore of snapshot {plan.snapshot.id} failed: {error}"
                self.log.warning("snapkernel: %s; starting cold", plan.reason)
                if isinstance(error, SnapshotError) and not isinstance(error, TRANSIENT_FAILURES):
                    # The same snapshot would fail the same way: never offer it again, and do not rebuild it
                    # in a loop (a rebuild of the same cells would carry the same cause).
                    (plan.store or self.store).mark_unusable(plan.snapshot.id, str(error).splitlines()[0])
                    plan.build = False
        if plan.reason:
            self.log.info("snapkernel: cold start for %s (%s)", plan.notebook, plan.reason)
        env = kwargs.setdefault("env", dict(os.environ))
        env[START_ENV_VAR] = json.dumps({"reason": plan.reason, "notebook": str(plan.notebook or "")})
        self.start_report = {
            "start": "cold",
            "snapshot": None,
            "reason": plan.reason,
            "restore_s": None,
            "setup_s": None,
            "started": started,
        }
        info = await super().launch_kernel(cmd, **kwargs)
        # A requested cold start plans no section, so it builds nothing either.
        if plan.section is not None and plan.notebook is not None and plan.build and self.settings.auto_build:
            try:
                self._background_build(plan.notebook, plan.section)
            except Exception as error:  # the kernel runs: a build that cannot start must not fail its launch
                self.log.warning("snapkernel: could not start the snapshot build of %s: %s", plan.notebook, error)
        return info

    def _background_build(self, notebook: Path, section: SetupSection) -> None:
        gpu_state = notebook_gpu_state(notebook, self.settings.gpu_state)
        # The server's one build manager: a build the REST API started for this section is joined.
        settings = self.settings

        def trim(_: Manifest) -> None:
            self.store.trim(quota_bytes=settings.quota_bytes, max_snapshots=settings.max_snapshots)

        build = build_manager.start(
            notebook, section, self.store, settings.build_timeout, after_publish=trim, gpu_state=gpu_state
        )

        def report(done: asyncio.Task[Manifest]) -> None:
            if done.cancelled() or isinstance(done.exception(), BuildCancelled):
                return  # stopped with the server
            error = done.exception()
            if error is None:
                self.log.info("snapkernel: snapshot %s of %s is ready", done.result().id, notebook)
                if self.settings.spare_kernels:
                    lazy = self._lazy()
                    spare_pool.refill(self.store, done.result(), lazy=lazy, timeout=self.settings.restore_timeout)
            else:
                self.log.warning("snapkernel: snapshot build of %s failed: %s", notebook, error)

        assert build.task is not None
        build.task.add_done_callback(report)

    def _lazy(self) -> bool:
        """Whether restores load memory lazily: asked for, and possible here (root mode only)."""
        if not self.settings.lazy_restore:
            return False
        if lazy_restore_supported():
            return True
        self.log.warning("snapkernel: lazy_restore is on, but %s: restoring eagerly", LAZY_NEEDS_ROOT)
        return False

    async def _restore(self, manifest: Manifest, store: SnapshotStore, kwargs: dict[str, Any]) -> KernelConnectionInfo:
        """Restore the snapshot (or take its spare) and hand it this launch's connection, env and cwd."""
        started = time.time()
        settings = self.settings
        lazy = self._lazy()
        waiting = spare_pool.take(manifest.id) if settings.spare_kernels else None
        from_spare = waiting is not None
        if waiting is None:
            waiting = await asyncio.to_thread(
                restore_waiting, store, manifest, lazy=lazy, timeout=settings.restore_timeout
            )
        cwd = str(kwargs.get("cwd") or os.getcwd())
        try:
            waiting.channel.send(
                connection_file=self.parent.connection_file,
                env=kwargs.get("env") or dict(os.environ),
                cwd=cwd,
                snapshot=manifest.id,
                restore_started=started,
                from_spare=from_spare,
            )
            reply = await asyncio.wait_for(asyncio.to_thread(waiting.channel.receive), settings.restore_timeout)
            if reply.get("event") != "resumed":
                raise RuntimeError(reply.get("error") or f"unexpected reply {reply}")
        except BaseException:
            waiting.discard()
            raise
        waiting.close_pipes()
        self.log.info(
            "snapkernel: restored %s from snapshot %s in %.2f s%s", kwargs.get("kernel_id", "kernel"), manifest.id,
            time.time() - started, " (a spare restored ahead)" if from_spare else "",
        )  # fmt: skip
        if settings.spare_kernels:
            spare_pool.refill(store, manifest, lazy=lazy, timeout=settings.restore_timeout)
        tree = waiting.tree
        self.process = RestoredKernelProcess(tree)
        self.pid = tree.pid
        self.pgid = tree.pid
        self.cwd = cwd
        return self.connection_info
