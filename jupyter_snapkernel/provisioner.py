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

from snapkernel_engine import Manifest, RestoredTree, SnapshotStore
from snapkernel_engine.diagnostics import snapshot_blocker
from snapkernel_engine.failures import RestoreFailure, classify_restore_failure
from snapkernel_engine.restore import LAZY_NEEDS_ROOT, lazy_restore_supported

from . import env_names
from .background_builds import background_builds
from .builder import BuildCancelled, keep_within_limits, notebook_gpu_state
from .config import SnapKernelSettings
from .setup_section import NotebookError, SetupSection
from .spares import SpareLimits, restore_awaiting_connection, spare_pool
from .status import forget_stale_restores, note_stale_restore, notebook_file_state, user_stores


@dataclass
class StartPlan:
    """What the provisioner decided for one launch."""

    notebook: Path | None = None
    section: SetupSection | None = None
    snapshot: Manifest | None = None
    reason: str | None = None
    store: SnapshotStore | None = None  # the store that holds `snapshot`
    build: bool = True  # whether a cold start of this plan may build the snapshot in the background
    own_store: SnapshotStore | None = None  # the user's store, where builds publish


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
        if env.get(env_names.COLD, "").lower() in {"1", "true", "yes"}:
            return StartPlan(notebook=Path(session_name), reason="cold start requested")
        notebook = Path(session_name)
        if not notebook.is_absolute():
            notebook = Path(cwd or ".") / notebook.name
        if notebook.suffix != ".ipynb" or not os.path.lexists(notebook):  # a session of no notebook file
            return StartPlan(notebook=notebook, reason=None)
        stores = user_stores(self.settings)
        try:
            state = notebook_file_state(stores, notebook, env, quota_bytes=self.settings.quota_bytes)
        except NotebookError as error:  # unreadable, not JSON, or not a valid notebook: the kernel starts cold
            why = error.problem if error.unreadable else str(error)
            return StartPlan(notebook=notebook, reason=f"cannot read the notebook: {why}")
        if state.section is None:
            return StartPlan(notebook=notebook)
        if state.restorable:
            return StartPlan(notebook, state.section, state.snapshot, store=state.store, own_store=stores[0])
        return StartPlan(notebook, state.section, reason=state.cold_reason, build=state.rebuild, own_store=stores[0])

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs.setdefault("env", dict(os.environ))
        self.start_plan = await asyncio.to_thread(self.plan, env, kwargs.get("cwd"))
        env[env_names.STORE] = str(self.settings.user_store_root)
        # The kernel's `%snapshot status` then looks where this plan looked.
        env[env_names.SHARED_ROOTS] = ",".join(self.settings.shared_roots)
        env[env_names.SHARED_ROOT_OWNERS] = ",".join(self.settings.shared_root_owners)
        env[env_names.VERIFY] = self.settings.verify
        env[env_names.QUOTA_BYTES] = str(self.settings.quota_bytes)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        plan: StartPlan = getattr(self, "start_plan", StartPlan())
        started = time.time()
        self._track_spares(plan)
        if plan.snapshot is not None and plan.store is not None:
            try:
                info, resumed = await self._restore(plan.snapshot, plan.store, plan.notebook, kwargs)
                # The kernel's own figures: the toast shows what `%snapshot status` prints.
                self.start_report = {
                    "start": "restored",
                    "snapshot": plan.snapshot.id,
                    "reason": None,
                    "restore_s": resumed.get("restore_s"),
                    "setup_s": resumed.get("setup_s"),
                    "saved_s": resumed.get("saved_s"),
                    "started": started,
                }
                if plan.own_store is not None:
                    await asyncio.to_thread(forget_stale_restores, plan.own_store, plan.snapshot.key)
                self._session_opened(plan)
                return info
            except Exception as error:
                failure = classify_restore_failure(error)
                plan.reason = failure.reason(plan.snapshot.id, error)
                self.log.warning("snapkernel: %s; starting cold", plan.reason)
                try:
                    await asyncio.to_thread(self._after_failed_restore, plan, plan.snapshot, plan.store, failure)
                except Exception as bookkeeping:  # the kernel starts cold all the same
                    self.log.warning("snapkernel: could not record the failed restore: %s", bookkeeping)
        if plan.reason:
            self.log.info("snapkernel: cold start for %s (%s)", plan.notebook, plan.reason)
        env = kwargs.setdefault("env", dict(os.environ))
        env[env_names.START] = json.dumps({"reason": plan.reason, "notebook": str(plan.notebook or "")})
        self.start_report = {
            "start": "cold",
            "snapshot": None,
            "reason": plan.reason,
            "restore_s": None,
            "setup_s": None,
            "saved_s": None,
            "started": started,
        }
        info = await super().launch_kernel(cmd, **kwargs)
        # A requested cold start plans no section, so it builds nothing either.
        if plan.section and plan.notebook and plan.own_store and plan.build and self.settings.auto_build:
            try:
                await self._background_build(plan.notebook, plan.section, plan.own_store)
            except Exception as error:  # the kernel runs: a build that cannot start must not fail its launch
                self.log.warning("snapkernel: could not start the snapshot build of %s: %s", plan.notebook, error)
        self._session_opened(plan)
        return info

    def _after_failed_restore(
        self, plan: StartPlan, snapshot: Manifest, store: SnapshotStore, failure: RestoreFailure
    ) -> None:
        """Keep, rebuild or give up the snapshot whose restore failed, according to the cause."""
        if failure.kind == "transient":
            plan.build = False  # the next start tries this snapshot again: a rebuild would make the same one
        elif failure.kind == "stale":
            store.mark_stale(snapshot.id, failure.cause)
            # One rebuild now; rebuilt snapshots that fail the same way wait longer each time.
            plan.build = plan.own_store is not None and note_stale_restore(plan.own_store, snapshot.key, failure.cause)
        else:
            # The same snapshot would fail the same way: never offer it again, and do not rebuild it in a loop
            # (a rebuild of the same cells would carry the same cause).
            store.mark_unusable(snapshot.id, failure.cause)
            plan.build = False

    def _track_spares(self, plan: StartPlan) -> None:
        """Apply this server's spare limits, and retire the notebook's spares this start shows to be obsolete."""
        spare_pool.limits = SpareLimits(self.settings.spare_memory_bytes, self.settings.spare_idle_seconds)
        if plan.notebook is not None:
            keep = plan.snapshot.id if plan.snapshot is not None else None
            spare_pool.forget_notebook(plan.notebook, keep, "its notebook no longer starts from its snapshot")

    def _kernel_is_running(self) -> bool:
        """Whether this provisioner's kernel process lives (a spare of its notebook is in use while it does)."""
        return self.process is not None and self.process.poll() is None

    async def cleanup(self, restart: bool = False) -> None:
        """Note the kernel's end for the spares, then clean up as a local kernel does."""
        spare_pool.session_closed(self.kernel_id)
        await super().cleanup(restart)

    def _session_opened(self, plan: StartPlan) -> None:
        """Tell the spares that a kernel of the plan's notebook runs: its spares are in use while it does."""
        if plan.notebook is not None:
            spare_pool.session_opened(self.kernel_id, plan.notebook, self._kernel_is_running)

    async def _background_build(self, notebook: Path, section: SetupSection, store: SnapshotStore) -> None:
        """Start (or join) the build of this section's snapshot; reading the notebook happens off the loop."""
        gpu_state = await asyncio.to_thread(notebook_gpu_state, notebook, self.settings.gpu_state)
        # The server's one build manager: a build the REST API started for this section is joined.
        settings = self.settings

        def trim(manifest: Manifest) -> None:
            keep_within_limits(store, manifest, settings.quota_bytes, settings.max_snapshots)

        build = background_builds.start(
            notebook, section, store, settings.build_timeout, after_publish=trim, gpu_state=gpu_state
        )

        def report(done: asyncio.Future[Manifest]) -> None:
            if done.cancelled() or isinstance(done.exception(), BuildCancelled):
                return  # stopped with the server
            error = done.exception()
            if error is None:
                self.log.info("snapkernel: snapshot %s of %s is ready", done.result().id, notebook)
                if self.settings.spare_kernels:
                    lazy = self._lazy()
                    timeout = self.settings.restore_timeout
                    spare_pool.refill(store, done.result(), notebook, lazy=lazy, timeout=timeout)
            else:
                self.log.warning("snapkernel: snapshot build of %s failed: %s", notebook, error)

        assert build.task is not None
        spare_pool.replace_after(build.task, notebook)
        build.task.add_done_callback(report)

    def _lazy(self) -> bool:
        """Whether restores load memory lazily: asked for, and possible here (root mode only)."""
        if not self.settings.lazy_restore:
            return False
        if lazy_restore_supported():
            return True
        self.log.warning("snapkernel: lazy_restore is on, but %s: restoring eagerly", LAZY_NEEDS_ROOT)
        return False

    async def _restore(
        self, manifest: Manifest, store: SnapshotStore, notebook: Path | None, kwargs: dict[str, Any]
    ) -> tuple[KernelConnectionInfo, dict[str, Any]]:
        """Restore the snapshot (or take its spare), hand it this launch's connection, env and cwd; return the
        connection and the kernel's `resumed` event."""
        started = time.time()
        settings = self.settings
        lazy = self._lazy()
        waiting = spare_pool.take(manifest.id) if settings.spare_kernels else None
        from_spare = waiting is not None
        if waiting is None:
            waiting = await asyncio.to_thread(
                restore_awaiting_connection, store, manifest, lazy=lazy, timeout=settings.restore_timeout
            )
        cwd = str(kwargs.get("cwd") or os.getcwd())
        assert self.parent is not None, "a provisioner launches for its kernel manager"
        try:
            waiting.channel.send(
                connection_file=self.parent.connection_file,
                env=kwargs.get("env") or dict(os.environ),
                cwd=cwd,
                snapshot=manifest.id,
                restore_started=started,
                setup_s=float(manifest.labels.get("setup_s", 0)),
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
            spare_pool.refill(store, manifest, notebook, lazy=lazy, timeout=settings.restore_timeout)
        tree = waiting.tree
        self.process = RestoredKernelProcess(tree)  # type: ignore[assignment]  # Popen's interface, not its class
        self.pid = tree.pid
        self.pgid = tree.pid
        self.cwd = cwd
        return self.connection_info, reply
