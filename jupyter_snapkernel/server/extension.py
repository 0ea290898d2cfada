"""The jupyter_server extension: settings, the REST API, and stopping what snapkernel started with the server."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from snapkernel_engine import SnapshotError

from ..config import SnapKernelSettings
from ..launch.background_builds import background_builds
from ..launch.check import BackgroundChecks
from ..launch.spares import spare_pool
from ..paths import open_store
from .handlers import handlers

# Seconds the server waits at its stop for builds to kill their kernels and for spares being restored.
STOP_TIMEOUT_S = 3.0


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the API handlers with the server, and the cleanup that runs when it stops."""
    settings = SnapKernelSettings(parent=serverapp)
    web_app = serverapp.web_app
    web_app.settings["snapkernel_settings"] = settings
    background_builds.max_concurrent = settings.max_concurrent_builds
    background_builds.max_queued = settings.max_queued_builds
    web_app.settings["snapkernel_builds"] = background_builds
    web_app.settings["snapkernel_checks"] = BackgroundChecks()
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    stop_with_the_server(serverapp)
    spare_pool.log = serverapp.log  # the spares' retirements appear in the server's log
    threading.Thread(target=prepare_store, args=(settings, serverapp.log), daemon=True, name="snapkernel-start").start()
    serverapp.log.info(
        "snapkernel: API at %ssnapkernel/api/, store %s", web_app.settings["base_url"], settings.user_store_root
    )


def prepare_store(settings: SnapKernelSettings, log: logging.Logger) -> None:
    """Work out this machine's fingerprint (the first kernel starts then need not), then tidy the store.

    Tidying removes what killed builds and restores left, corrupt entries and replaced snapshots, then
    keeps to the quota.
    """
    try:
        store = open_store(settings.user_store_root, verify=settings.verify)
        store.fingerprint_digest()
        if not store.root.is_dir():
            return
        removed = store.clean_up(quota_bytes=settings.quota_bytes or None)
    except (SnapshotError, OSError) as error:
        log.warning("snapkernel: could not tidy the snapshot store: %s", error)
        return
    if removed:
        log.info("snapkernel: removed %d snapshot store entries: %s", len(removed), " ".join(removed))


async def stop_background_work(timeout: float = STOP_TIMEOUT_S) -> None:
    """Kill the spare kernels and stop the running snapshot builds, their build kernels included."""
    await asyncio.gather(spare_pool.close(timeout), background_builds.stop_all(timeout))


def forget_failed_starts(kernel_manager: Any) -> list[str]:
    """Drop kernels whose start failed from the kernel manager's pending starts; return their ids.

    jupyter_client keeps the id of a failed start among its pending kernels. At the server's stop
    `shutdown_all` shuts that id down too, jupyter_server answers "404: Kernel does not exist", and
    the cleanup ends before it stops the event loop: the server never exits.
    """
    pending = getattr(kernel_manager, "_pending_kernels", None)
    started = getattr(kernel_manager, "_kernels", {})
    if not isinstance(pending, dict):
        return []
    failed = [
        kernel_id
        for kernel_id, start in pending.items()
        if kernel_id not in started and isinstance(start, asyncio.Future) and start.done()
    ]
    for kernel_id in failed:
        del pending[kernel_id]
    return failed


def stop_with_the_server(serverapp: Any) -> None:
    """Make the server's kernel cleanup (run at every stop, SIGTERM included) stop snapkernel's work first.

    The server stops its kernels in `cleanup_kernels`, after its extensions' stop hooks. Spare kernels
    and builds are stopped there, right before the kernels; an error on the way is logged, and the
    server still stops its event loop and exits.
    """
    shutdown_kernels = serverapp.cleanup_kernels
    log = serverapp.log

    async def cleanup_kernels() -> None:
        """Stop spares and builds, forget failed starts, then shut the kernels down."""
        try:
            await stop_background_work()
        except Exception as error:
            log.warning("snapkernel: stopping spare kernels and snapshot builds failed: %s", error)
        for kernel_id in forget_failed_starts(getattr(serverapp, "kernel_manager", None)):
            log.info("snapkernel: kernel %s never started: nothing to shut down", kernel_id)
        try:
            await shutdown_kernels()
        except Exception as error:
            log.warning("snapkernel: shutting the kernels down failed (%s); the server stops all the same", error)

    serverapp.cleanup_kernels = cleanup_kernels
