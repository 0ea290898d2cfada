"""Kernel provisioner that restores a notebook's kernel from its snapshot, or starts it cold."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import time
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo, port_names
from jupyter_client.manager import KernelManager
from jupyter_client.multikernelmanager import MultiKernelManager
from jupyter_client.provisioning import LocalProvisioner

from snapkernel_engine import Manifest, RestoredTree, SnapshotStore
from snapkernel_engine.messages import Resumed

from .. import env_names
from ..answers import KernelStart, kernel_start
from ..config import SnapKernelSettings
from ..notebook.binding import executing_notebook, notebook_binding
from ..notebook.builder import BuildCancelled
from ..notebook.setup_section import SetupSection
from ..notebook.state import forget_stale_restores
from .background_builds import background_builds, build_in_own_process, start_build
from .network import IPC_PREFIX, private_ipc_folder, restores_in_own_network
from .ports import reserve_ports
from .spares import PortTaken, SpareLimits, restored_and_resumed, spare_pool
from .start_plan import StartPlan, cold_start_note, fall_back_to_cold, lazy_restores, plan_start, resume_request


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


def move_to_new_ports(
    manager: KernelManager, env: dict[str, str], ipc_folder: Path | None = None
) -> KernelConnectionInfo:
    """Give a kernel manager's connection new ports and write its connection file again: five new reserved TCP
    ports, or with `ipc_folder`, ipc sockets in that folder."""
    manager.cleanup_connection_file()
    for name in port_names:
        setattr(manager, name, 0)
    if ipc_folder is None:
        reserve_ports(manager)
    else:
        manager.transport = "ipc"
        manager.cache_ports = False  # jupyter_client caches TCP ports only: a restart must not probe a path for one
        manager.ip = str(ipc_folder / IPC_PREFIX)
    manager.write_connection_file(jupyter_session=env.get("JPY_SESSION_NAME", ""))
    return manager.get_connection_info()


class SnapKernelProvisioner(LocalProvisioner):
    """Restores `snapkernel` kernels from snapshots of their notebook's setup cells."""

    start_plan: StartPlan
    start_report: KernelStart  # how the kernel started: GET kernels/ID answers it, headless runs read it
    own_network = False  # the plan's restore runs in a network namespace of its own (over ipc)
    ipc_folder: Path | None = None  # where this kernel's ipc sockets are, once it was handed an ipc connection
    launched = False  # a kernel was launched before: this launch is a restart

    @property
    def settings(self) -> SnapKernelSettings:
        """The administrator's settings (``c.SnapKernelSettings``), read through this server's config."""
        if not hasattr(self, "_settings"):
            self._settings = SnapKernelSettings(parent=self)
        return self._settings

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        manager = self.parent
        if manager is not None and manager.transport == "tcp" and manager.cache_ports and not self.ports_cached:
            reserve_ports(manager)  # jupyter_client then writes them into the connection file as they are
            self.ports_cached = True
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs.setdefault("env", dict(os.environ))
        kernel_name = getattr(self.parent, "kernel_name", "snapkernel")
        binding = notebook_binding(env, kwargs.get("cmd") or [], kwargs.get("cwd"))
        plan = functools.partial(plan_start, self.settings, kernel_name, env, kwargs.get("cwd"), binding)
        self.start_plan = await asyncio.to_thread(plan, executing_notebook(self.parent))
        snapshot = self.start_plan.snapshot
        # A restart keeps its connection's transport: the server's channels of open websockets stay on it.
        ipc = manager is not None and (manager.transport == "ipc" or not self.launched)
        setting = self.settings.restore_network
        self.own_network = snapshot is not None and restores_in_own_network(snapshot, setting, ipc=ipc)
        if self.own_network and manager is not None and manager.transport != "ipc":
            await self._hand_over_ipc(manager, env)
        env[env_names.STORE] = str(self.settings.user_store_root)
        # The kernel's `%snapshot status` then looks where this plan looked.
        env[env_names.SHARED_ROOTS] = ",".join(self.settings.shared_roots)
        env[env_names.SHARED_ROOT_OWNERS] = ",".join(self.settings.shared_root_owners)
        env[env_names.VERIFY] = self.settings.verify
        env[env_names.QUOTA_BYTES] = str(self.settings.quota_bytes)
        return kwargs

    async def _hand_over_ipc(self, manager: KernelManager, env: dict[str, str]) -> None:
        """Give the kernel an ipc connection in a private folder of its own (kept across restarts): a TCP port in
        an empty network namespace is out of the server's reach."""
        if self.ipc_folder is None:
            self.ipc_folder = await asyncio.to_thread(private_ipc_folder)
        self.connection_info = move_to_new_ports(manager, env, self.ipc_folder)
        self.ports_cached = False  # no TCP port is held for this kernel any more

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Restore the plan's snapshot; start cold when there is none or its restore fails (saying why)."""
        plan: StartPlan = getattr(self, "start_plan", StartPlan())
        started = time.time()
        self.launched = True
        self._track_spares(plan)
        info = await self._launch_restored(plan, started, kwargs) if plan.snapshot is not None else None
        if info is None:
            info = await self._launch_cold(plan, started, cmd, kwargs)
        self._session_opened(plan)
        return info

    async def _launch_restored(
        self, plan: StartPlan, started: float, kwargs: dict[str, Any]
    ) -> KernelConnectionInfo | None:
        """Restore the plan's snapshot; None when the restore failed (the plan then says why, and the failure is
        recorded)."""
        snapshot, state = plan.snapshot, plan.state
        assert snapshot is not None and state is not None and state.store is not None
        try:
            info, resumed = await self._restore(snapshot, state.store, plan.notebook, kwargs)
        except Exception as error:
            await asyncio.to_thread(fall_back_to_cold, plan, error, self.log)
            return None
        cells = (state.restored_cells, len(state.section.cells)) if state.section is not None else None
        # The kernel's own figures, as it prints them
        self.start_report = kernel_start(started, snapshot, resumed, cells=cells, fetched=plan.fetched)
        if plan.own_store is not None:
            await asyncio.to_thread(forget_stale_restores, plan.own_store, snapshot.key)
        if state.restored_cells is not None:  # the cells after the restore point run again: build the rest now
            self._build_after_start(plan)
        return info

    async def _launch_cold(
        self, plan: StartPlan, started: float, cmd: list[str], kwargs: dict[str, Any]
    ) -> KernelConnectionInfo:
        """Start the kernel as ipykernel would, telling it why; then build its snapshot in the background."""
        if plan.reason:
            self.log.info("snapkernel: cold start for %s (%s)", plan.notebook, plan.reason)
        env = kwargs.setdefault("env", dict(os.environ))
        env[env_names.START] = cold_start_note(plan)
        env[env_names.PROVISIONED] = "1"  # the kernelspec's launcher then becomes the kernel, planning nothing
        self.start_report = kernel_start(started, reason=plan.reason, fetched=plan.fetched)
        info = await super().launch_kernel(cmd, **kwargs)
        self._build_after_start(plan)
        return info

    def _build_after_start(self, plan: StartPlan) -> None:
        """Build the plan's snapshot in the background, where it wants one and automatic builds are on."""
        state = plan.to_build
        # A requested cold start plans no state, so it builds nothing either.
        if state and state.section and plan.notebook and plan.own_store and self.settings.auto_build:
            if not self._in_a_server():  # papermill, nbclient: their process ends with the run, and its threads
                build_in_own_process(plan.notebook, plan.own_store, self.log)
                return
            try:
                self._background_build(plan.notebook, state.section, plan.own_store)
            except Exception as error:  # the kernel runs: a build that cannot start must not fail its launch
                self.log.warning("snapkernel: could not start the snapshot build of %s: %s", plan.notebook, error)

    def _in_a_server(self) -> bool:
        """Whether this kernel's manager belongs to a Jupyter server's kernels (a process that outlives it)."""
        return isinstance(getattr(self.parent, "parent", None), MultiKernelManager)

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
        """Note the kernel's end for the spares, then clean up as a local kernel does, and remove its ipc folder."""
        spare_pool.sessions.closed(self.kernel_id)
        await super().cleanup(restart)
        if self.ipc_folder is not None and not restart:
            await asyncio.to_thread(shutil.rmtree, self.ipc_folder, ignore_errors=True)
            self.ipc_folder = None

    def _session_opened(self, plan: StartPlan) -> None:
        """Tell the spares that a kernel of the plan's notebook runs: its spares are in use while it does."""
        if plan.notebook is not None:
            spare_pool.sessions.opened(self.kernel_id, plan.notebook, self._kernel_is_running)

    def _background_build(self, notebook: Path, section: SetupSection, store: SnapshotStore) -> None:
        """Start (or join) the build of this section's snapshot, and refill the spares once it is published."""
        # The server's one build manager: a build the REST API started for this section is joined.
        build = start_build(background_builds, notebook, section, store, self.settings)

        def report(done: asyncio.Future[Manifest]) -> None:
            if done.cancelled() or isinstance(done.exception(), BuildCancelled):
                return  # stopped with the server
            error = done.exception()
            if error is None:
                self.log.info("snapkernel: snapshot %s of %s is ready", done.result().id, notebook)
                if self.settings.spare_kernels:
                    lazy = lazy_restores(self.settings, self.log)
                    timeout = self.settings.restore_timeout
                    own = restores_in_own_network(done.result(), self.settings.restore_network)
                    spare_pool.refill(store, done.result(), notebook, lazy=lazy, timeout=timeout, own_network=own)
            else:
                self.log.warning("snapkernel: snapshot build of %s failed: %s", notebook, error)

        assert build.task is not None
        build.task.add_done_callback(report)

    async def _restore(
        self, manifest: Manifest, store: SnapshotStore, notebook: Path | None, kwargs: dict[str, Any]
    ) -> tuple[KernelConnectionInfo, Resumed]:
        """Restore the snapshot (or take its spare), hand it this launch's connection, env and cwd; return the
        connection and the kernel's `resumed` event."""
        started = time.time()
        settings = self.settings
        lazy = lazy_restores(self.settings, self.log)
        assert self.parent is not None, "a provisioner launches for its kernel manager"
        launch = resume_request(self.parent.connection_file, manifest, kwargs, started, self.start_plan.binding)
        own_network = self.own_network
        restore = functools.partial(
            restored_and_resumed, store, manifest, launch, lazy, settings.restore_timeout, settings.spare_kernels,
            own_network=own_network,
        )  # fmt: skip
        try:
            waiting, resumed, from_spare = await restore()
        except PortTaken as error:  # another process took a port between its choice and the kernel's bind
            if self.parent.transport != "tcp":
                raise  # an ipc socket is a file of this kernel's private folder: nobody else takes it
            self.log.info("snapkernel: %s; restoring again on new ports", error)
            self.connection_info = move_to_new_ports(self.parent, launch.env)
            waiting, resumed, from_spare = await restore()
        self.log.info(
            "snapkernel: restored %s from snapshot %s in %.2f s%s%s", kwargs.get("kernel_id", "kernel"), manifest.id,
            time.time() - started, " (a spare restored ahead)" if from_spare else "",
            " in a network namespace of its own" if own_network else "",
        )  # fmt: skip
        whole_setup = self.start_plan.state is None or self.start_plan.state.restored_cells is None
        if settings.spare_kernels and whole_setup:  # a restore point's spare would be obsolete once the rest is built
            timeout = settings.restore_timeout
            spare_pool.refill(store, manifest, notebook, lazy=lazy, timeout=timeout, own_network=own_network)
        tree = waiting.tree
        self.process = RestoredKernelProcess(tree)  # type: ignore[assignment]  # Popen's interface, not its class
        self.pid = tree.pid
        self.pgid = tree.pid
        self.cwd = launch.cwd
        return self.connection_info, resumed
