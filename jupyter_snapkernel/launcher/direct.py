"""A launch nobody planned: the launcher plans it as the provisioner does, restores the kernel or runs it cold."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import NoReturn

from snapkernel_engine import RestoredTree

from .. import env_names
from ..config import SnapKernelSettings
from ..launch.background_builds import build_in_own_process
from ..launch.network import connection_transport, restores_in_own_network
from ..launch.spares import restored_and_resumed
from ..launch.start_plan import (
    StartPlan,
    cold_start_note,
    fall_back_to_cold,
    lazy_restores,
    plan_start,
    resume_request,
)
from ..notebook.binding import KERNEL_MODULE, notebook_binding
from ..notebook.state import forget_stale_restores
from .arguments import LaunchArguments
from .supervise import supervise

log = logging.getLogger("snapkernel.launcher")


def launch(arguments: LaunchArguments) -> int:
    """Plan the launch; restore and supervise the kernel, or become it cold. Return the kernel's exit status."""
    logging.basicConfig(format="%(message)s", level=logging.INFO, stream=sys.stderr)
    settings = SnapKernelSettings()
    env, cwd = dict(os.environ), os.getcwd()
    binding = notebook_binding(env, sys.argv[1:], cwd)
    plan = plan_start(settings, arguments.kernelspec, env, cwd, binding)
    if plan.snapshot is not None and arguments.connection_file is not None:
        tree = restore(plan, settings, arguments.connection_file)
        if tree is not None:
            if plan.state is not None and plan.state.restored_cells is not None:
                build_in_background(plan, settings)  # the cells after the restore point: build them now
            return supervise(tree)
    elif plan.snapshot is not None:
        plan.why_cold = "the kernelspec's argv names no connection file (-f FILE): a restored kernel needs one"
    run_cold(plan, settings, arguments)


def restore(plan: StartPlan, settings: SnapKernelSettings, connection_file: str) -> RestoredTree | None:
    """Restore the plan's snapshot and hand it this launch; None when that failed (the plan then says why).

    The editor chose the connection file and its transport, and connects as it says: over TCP the kernel must
    listen in the host's network, so only an ipc connection file lets a restore run in a network of its own
    (a second live kernel of a GPU snapshot over TCP then starts cold).
    """
    snapshot, state = plan.snapshot, plan.state
    assert snapshot is not None and state is not None and state.store is not None
    started = time.time()
    launch = {"env": dict(os.environ), "cwd": os.getcwd()}
    request = resume_request(connection_file, snapshot, launch, started, plan.binding)
    lazy = lazy_restores(settings, log)
    ipc = connection_transport(connection_file) == "ipc"
    own_network = restores_in_own_network(snapshot, settings.restore_network, ipc=ipc)
    restoring = restored_and_resumed(
        state.store, snapshot, request, lazy, settings.restore_timeout, spares=False, own_network=own_network
    )
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt is meant for the kernel, once it runs
    try:
        waiting, resumed, _ = asyncio.run(restoring)
    except Exception as error:
        fall_back_to_cold(plan, error, log)
        return None
    finally:
        signal.signal(signal.SIGINT, previous)
    log.info("snapkernel: restored from snapshot %s in %.2f s (%s)", snapshot.id, resumed.restore_s, plan.notebook)
    if plan.own_store is not None:
        forget_stale_restores(plan.own_store, snapshot.key)
    return waiting.tree


def build_in_background(plan: StartPlan, settings: SnapKernelSettings) -> None:
    """Build the plan's snapshot in a process of its own, where it wants one and automatic builds are on."""
    state = plan.to_build
    if state is None or plan.notebook is None or plan.own_store is None or not settings.auto_build:
        return
    if state.state not in {"queued", "building"}:
        build_in_own_process(plan.notebook, plan.own_store, log)


def run_cold(plan: StartPlan, settings: SnapKernelSettings, arguments: LaunchArguments) -> NoReturn:
    """Become the kernel, cold, telling it (and stderr) why; build the snapshot in the background first."""
    if plan.reason:
        log.info("snapkernel: cold start (%s)", plan.reason)
    build_in_background(plan, settings)
    # No frontend of a directly run kernelspec shows how kernels start: the first executed cell says it.
    env = {**os.environ, env_names.START: cold_start_note(plan, say_why_first=True)}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", KERNEL_MODULE, *arguments.kernel_argv], env)
