"""REST API under /snapkernel/api/: snapshots, a notebook's status, and builds."""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from engine import Manifest, SnapshotError, SnapshotNotFound, SnapshotStore

from .builder import notebook_gpu_state
from .builds import BuildManager
from .config import SnapKernelSettings
from .paths import open_store
from .setup_section import read_setup_section
from .status import notebook_state

AUTH_RESOURCE = "snapkernel"


def manifest_summary(manifest: Manifest, store: SnapshotStore) -> dict[str, Any]:
    """The fields of a manifest that the UI and admins need."""
    return {
        "id": manifest.id,
        "setup_hash": manifest.key,
        "notebook": manifest.labels.get("notebook"),
        "created": manifest.created,
        "size_bytes": manifest.size_bytes,
        "rss_bytes": manifest.rss_bytes,
        "hardware": manifest.hardware,
        "environment": manifest.environment,
        "versions": manifest.versions,
        "labels": manifest.labels,
        "stale": store.mismatches(manifest),
    }


class SnapKernelHandler(APIHandler):
    """Base of the API's handlers: authenticated, authorized, with the user's store at hand."""

    auth_resource = AUTH_RESOURCE

    @property
    def settings_(self) -> SnapKernelSettings:
        return self.settings["snapkernel_settings"]

    @property
    def builds(self) -> BuildManager:
        return self.settings["snapkernel_builds"]

    @property
    def store(self) -> SnapshotStore:
        return open_store(self.settings_.user_store_root, verify=self.settings_.verify)

    def notebook_path(self, api_path: str | None) -> Path:
        """Resolve an API path inside the contents root; refuse anything that leaves it."""
        if not api_path:
            raise web.HTTPError(400, "a notebook path is required")
        if api_path.startswith("/") or "\x00" in api_path or ".." in Path(api_path).parts:
            raise web.HTTPError(403, "the path must stay inside the server's root")
        root = Path(self.contents_manager.root_dir).resolve()
        path = (root / api_path).resolve()
        if not path.is_relative_to(root):
            raise web.HTTPError(403, "the path must stay inside the server's root")
        if path.suffix != ".ipynb" or not path.is_file():
            raise web.HTTPError(404, f"no notebook at {api_path}")
        return path

    def write_json(self, data: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(data))


class SnapshotsHandler(SnapKernelHandler):
    """GET snapshots: the user's snapshots."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        store = self.store
        self.write_json({"snapshots": [manifest_summary(m, store) for m in store.list()]})


class SnapshotHandler(SnapKernelHandler):
    """DELETE snapshots/ID."""

    @web.authenticated
    @authorized
    async def delete(self, snapshot_id: str) -> None:
        try:
            self.store.delete(snapshot_id)
        except SnapshotNotFound as error:
            raise web.HTTPError(404, str(error)) from None
        except SnapshotError as error:
            raise web.HTTPError(409, str(error)) from None
        self.set_status(204)
        self.finish()


class StatusHandler(SnapKernelHandler):
    """GET status?path=NB: none | building | ready | stale | failed, with details."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        notebook = self.notebook_path(self.get_query_argument("path", None))
        state = notebook_state(self.store, notebook)
        running = self.builds.running(state.setup_hash) if state.setup_hash else None
        if running is not None:
            state.state = "building"
        snapshot = state.snapshot
        self.write_json(
            {
                "path": self.get_query_argument("path"),
                "state": state.state,
                "setup_hash": state.setup_hash,
                "snapshot": snapshot.id if snapshot else None,
                "size_bytes": snapshot.size_bytes if snapshot else None,
                "age_s": round(time.time() - _timestamp(snapshot.created), 1) if snapshot else None,
                "reasons": state.reasons,
                "reason": state.reasons[0] if state.state in {"failed", "stale"} and state.reasons else None,
                "build": running.id if running else None,
            }
        )


class BuildsHandler(SnapKernelHandler):
    """POST builds {path}: start (or join) the build of a notebook's snapshot."""

    @web.authenticated
    @authorized
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, 'the body must be JSON: {"path": "notebook.ipynb"}') from None
        notebook = self.notebook_path(body.get("path"))
        section = read_setup_section(notebook)
        if section is None:
            raise web.HTTPError(422, "the notebook has no setup cell: tag one `snapshot` or start it with %%snapshot")
        store, settings = self.store, self.settings_

        def trim(_: Manifest) -> None:
            store.trim(quota_bytes=settings.quota_bytes, max_snapshots=settings.max_snapshots)

        build = self.builds.start(
            notebook,
            section,
            store,
            settings.build_timeout,
            on_ready=trim,
            gpu_state=notebook_gpu_state(notebook, settings.gpu_state),
        )
        self.write_json(build.to_dict(), status=202)


class BuildHandler(SnapKernelHandler):
    """GET builds/ID: a build's progress and result."""

    @web.authenticated
    @authorized
    async def get(self, build_id: str) -> None:
        build = self.builds.builds.get(build_id)
        if build is None:
            raise web.HTTPError(404, f"no build {build_id}")
        self.write_json(build.to_dict())


class KernelStartHandler(SnapKernelHandler):
    """GET kernels/ID: whether a kernel was restored or started cold, and why."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        try:
            manager = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            raise web.HTTPError(404, f"no kernel {kernel_id}") from None
        report = getattr(manager.provisioner, "start_report", None)
        if report is None:
            raise web.HTTPError(404, f"kernel {kernel_id} is not a snapkernel kernel")
        self.write_json(report)


def _timestamp(created: str) -> float:
    return datetime.fromisoformat(created).timestamp()


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]]]:
    """The API's routes under the server's base URL."""
    prefix = base_url.rstrip("/") + "/snapkernel/api"
    return [
        (f"{prefix}/snapshots", SnapshotsHandler),
        (f"{prefix}/snapshots/([A-Za-z0-9_-]+)", SnapshotHandler),
        (f"{prefix}/status", StatusHandler),
        (f"{prefix}/builds", BuildsHandler),
        (f"{prefix}/builds/([A-Za-z0-9_-]+)", BuildHandler),
        (f"{prefix}/kernels/([A-Za-z0-9_-]+)", KernelStartHandler),
    ]
