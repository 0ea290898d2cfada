"""REST API under /snapkernel/api/: snapshots, a notebook's status, builds and checks.

A bad request gets a 4xx with a one-line reason, never a 500; no answer names a server path: notebooks
are named relative to the server's root (None outside it), and messages are scrubbed; file work
(notebooks, the store) runs off the server's event loop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import time
from collections.abc import Mapping
from datetime import datetime
from functools import lru_cache
from http.client import responses
from pathlib import Path, PurePosixPath
from typing import Any, Literal, TypeVar

from jupyter_core.paths import is_hidden
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web

from snapkernel_engine import Manifest, SnapshotError, SnapshotNotFound, SnapshotStore, StoreError
from snapkernel_engine.version import __version__

from ..answers import BuildAnswer, CheckAnswer, NotebookStatus, RestorePointMarker, ServerInfo
from ..config import PROVISIONER_NAME, SnapKernelSettings
from ..launch.background_builds import BackgroundBuild, BackgroundBuilds, BuildQueueFull, start_build
from ..launch.check import MAX_RUNS, BackgroundCheck, BackgroundChecks, ChecksBusy
from ..launch.spares import measured, spare_pool
from ..notebook.setup_section import NotebookError, SetupSection, cells_problem, read_setup_section, setup_section_of
from ..notebook.state import (
    NotebookState,
    PointMark,
    notebook_state,
    point_markers,
    snapshot_summary,
    user_stores,
)
from ..paths import open_store

AUTH_RESOURCE = "snapkernel"
MAX_BODY_BYTES = 64 * 1024  # a POST builds body is {"path": ...}: anything larger is refused with 413
MAX_CELLS_BODY_BYTES = 16 * 1024 * 1024  # a POST status body carries a notebook's sources (no outputs)
MAX_NAME_BYTES = 255  # of one file name in a notebook path (NAME_MAX)
BODY_EXAMPLE = '{"path": "notebook.ipynb"}'
# An absolute path in a message: a slash that does not continue a word, a relative path or a URL.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/])/[^\s'\"`,;:()\[\]{}<>]*")
Known = TypeVar("Known")  # what a server keeps by id: builds, checks


def refusal(status: int, message: str) -> web.HTTPError:
    """An HTTPError whose message is taken as it is (a `%` in it is not a format)."""
    return web.HTTPError(status, "%s", message)


class SnapKernelHandler(APIHandler):
    """Base of the API's handlers: authenticated, authorized, with the user's store at hand."""

    auth_resource = AUTH_RESOURCE

    @property
    def settings_(self) -> SnapKernelSettings:
        """The server's snapkernel settings."""
        return self.settings["snapkernel_settings"]

    @property
    def builds(self) -> BackgroundBuilds:
        """The server's one build manager."""
        return self.settings["snapkernel_builds"]

    @property
    def checks(self) -> BackgroundChecks:
        """The server's one check manager."""
        return self.settings["snapkernel_checks"]

    def describe_check(self, check: BackgroundCheck) -> CheckAnswer:
        """A check as JSON, its error naming no server path."""
        answer = check.to_dict()
        if answer["error"]:
            answer["error"] = self.scrub(answer["error"])
        return answer

    def describe_build(self, build: BackgroundBuild) -> BuildAnswer:
        """A build as JSON, its notebook named by API path and its error naming no server path."""
        answer = self.builds.describe(build)
        answer["path"] = self.api_path(answer["path"])
        if answer["error"]:
            answer["error"] = self.scrub(answer["error"])
        return answer

    def describe_snapshot(self, store: SnapshotStore, manifest: Manifest) -> dict[str, Any]:
        """A snapshot as JSON (`snapshot_summary`), its notebook named by API path, naming no server path."""
        summary = snapshot_summary(store, manifest)
        summary["notebook"] = self.api_path(summary["notebook"])
        summary["labels"] = {name: self.scrub(value) for name, value in summary["labels"].items() if name != "notebook"}
        summary["environment"] = {
            name: self.scrub(value) if isinstance(value, str) else value
            for name, value in summary["environment"].items()
        }
        summary["reasons"] = [self.scrub(reason) for reason in summary["reasons"]]
        summary["stale"] = [self.scrub(reason) for reason in summary["stale"]]
        return summary

    @property
    def root_dirs(self) -> tuple[Path, Path]:
        """The server's root as configured and as resolved (notebooks are known by their resolved paths)."""
        configured = Path(os.path.abspath(self.contents_manager.root_dir))  # no disk access
        return configured, resolved_root(configured)

    def api_path(self, path: str | os.PathLike[str] | None) -> str | None:
        """A server path as the API names it: relative to the server's root; None for one outside it."""
        if not path:
            return None
        for root in self.root_dirs:
            if Path(path).is_relative_to(root):
                return str(Path(path).relative_to(root))
        return None

    @property
    def store(self) -> SnapshotStore:
        """This user's snapshot store (opening it touches the disk: call it off the event loop)."""
        return open_store(self.settings_.user_store_root, verify=self.settings_.verify)

    @property
    def contents_root(self) -> Path:
        """The directory the server serves, which API paths are relative to."""
        return Path(os.path.realpath(self.contents_manager.root_dir))

    async def notebook_path(self, api_path: object) -> Path:
        """Resolve an API path to a notebook file inside the contents root, off the event loop."""
        return await asyncio.to_thread(self._notebook_path, api_path)

    def _notebook_path(self, api_path: object) -> Path:
        """Resolve an API path inside the contents root; refuse anything that leaves it or is no notebook file."""
        if api_path is None or api_path == "":
            raise refusal(400, f"a notebook path is required: {BODY_EXAMPLE}")
        if not isinstance(api_path, str):
            raise refusal(400, f"the notebook path must be a string: {BODY_EXAMPLE}")
        try:
            api_path.encode("utf-8")
        except UnicodeEncodeError:
            raise refusal(400, "the notebook path is not valid UTF-8") from None
        parts = PurePosixPath(api_path).parts
        if api_path.startswith("/") or "\x00" in api_path or ".." in parts:
            raise refusal(403, "the path must stay inside the server's root")
        if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
            raise refusal(400, f"a file name in the path is longer than {MAX_NAME_BYTES} bytes")
        shown = shortened(api_path)
        root = self.contents_root
        try:
            path = Path(os.path.realpath(root / api_path, strict=True))
        except FileNotFoundError:
            raise refusal(404, f"no notebook at {shown}") from None
        except OSError as error:  # a symbolic link loop, a path too long, a directory that cannot be searched
            what = "a symbolic link loop" if error.errno == errno.ELOOP else (error.strerror or "cannot open it")
            raise refusal(400, f"{shown}: {what}") from None
        if not path.is_relative_to(root):
            raise refusal(403, "the path must stay inside the server's root")
        if path.suffix != ".ipynb" or not path.is_file():
            raise refusal(404, f"no notebook at {shown}")
        if not self.contents_manager.allow_hidden and is_hidden(root / api_path, root):
            raise refusal(404, f"no notebook at {shown}")  # what the contents API answers for a hidden file
        return path

    def notebook_error(self, api_path: str, error: NotebookError) -> web.HTTPError:
        """A 400 saying what is wrong with a notebook, named by its API path."""
        return refusal(400, error.naming(api_path))

    def scrub(self, message: str) -> str:
        """Replace the server's file-system paths in a message: the contents root's by API paths, others by `…/NAME`."""

        def shorten(match: re.Match[str]) -> str:
            path = Path(match.group(0))
            if path in self.root_dirs:
                return "."
            return self.api_path(path) or (f"…/{path.name}" if path.name else "…")

        return ABSOLUTE_PATH.sub(shorten, message)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Errors as JSON with a one-line message that names no server path (a bug's traceback stays in the log)."""
        error = kwargs.get("exc_info", (None, None, None))[1]
        reply: dict[str, Any] = {"message": responses.get(status_code, "Unknown HTTP Error"), "reason": None}
        if isinstance(error, web.HTTPError):
            if error.log_message:
                reply["message"] = error.log_message % error.args if error.args else error.log_message
            reply["reason"] = error.reason
        elif error is not None:
            reply.update(message="Unhandled error", traceback="")
        reply["message"] = self.scrub(str(reply["message"]))
        self.set_header("Content-Type", "application/json")
        self.log.warning("wrote error: %r", reply["message"])
        self.finish(json.dumps(reply))

    def write_json(self, data: Any, status: int = 200) -> None:
        """Answer with JSON."""
        self.set_status(status)
        self.finish(json.dumps(data))


class SnapshotsHandler(SnapKernelHandler):
    """GET snapshots: the user's snapshots."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List the snapshots, the entries of the store that are not valid snapshots, and this server's spares."""
        spares = spare_pool.describe()
        try:
            self.write_json(await asyncio.to_thread(self.listing, spares))
        except StoreError as error:  # not a snapkernel store: its entries are the user's files, not snapshots
            raise refusal(409, str(error)) from None

    def listing(self, spares: list[dict[str, Any]]) -> dict[str, Any]:
        """The store's snapshots and corrupt entries, read from disk, and the spares measured in /proc."""
        store = self.store
        manifests, corrupt = store.listing()
        snapshots = [self.describe_snapshot(store, manifest) for manifest in manifests]
        entries = [{"id": entry.id, "reason": self.scrub(entry.reason)} for entry in corrupt]
        for spare in spares:
            named = [self.api_path(notebook) for notebook in spare["notebooks"]]
            spare["notebooks"] = [path for path in named if path is not None]
        return {"snapshots": snapshots, "corrupt": entries, "spares": [measured(spare) for spare in spares]}


class SnapshotHandler(SnapKernelHandler):
    """DELETE snapshots/ID."""

    @web.authenticated
    @authorized
    async def delete(self, snapshot_id: str) -> None:
        """Delete one snapshot: 404 when there is none with that id, 409 when it cannot go now."""
        try:
            await asyncio.to_thread(lambda: self.store.delete(snapshot_id))
        except SnapshotNotFound:
            raise refusal(404, f"no snapshot {shortened(snapshot_id)}") from None
        except SnapshotError as error:
            raise refusal(409, str(error)) from None
        spare_pool.retire(snapshot_id, "its snapshot was deleted")
        self.set_status(204)
        self.finish()


@web.stream_request_body
class JSONBodyHandler(SnapKernelHandler):
    """A handler whose POST body is a JSON object of at most `max_body_bytes`.

    The body is streamed: one declared larger than the limit gets 413 before it is read, and one that
    turns out larger (chunked) gets 413 as soon as it passes the limit; none is kept in memory.
    """

    max_body_bytes = MAX_BODY_BYTES
    body_example = BODY_EXAMPLE

    async def prepare(self) -> None:  # type: ignore[override]  # APIHandler's own prepare takes no arguments
        """Authenticate, then refuse a body declared larger than the limit before reading it."""
        self.received_body = bytearray()
        self.body_too_large = False
        await super().prepare()
        declared = self.request.headers.get("Content-Length", "0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self.too_large()

    def too_large(self) -> web.HTTPError:
        """The 413 for a body over the limit."""
        return refusal(413, f"the body is larger than {self.max_body_bytes} bytes: send {self.body_example}")

    def data_received(self, chunk: bytes) -> None:
        """Keep the body up to the limit; past it, answer 413 at once and drop what still arrives."""
        if self.body_too_large:
            return
        if len(self.received_body) + len(chunk) > self.max_body_bytes:
            self.body_too_large = True
            self.received_body.clear()
            error = self.too_large()
            self.send_error(413, exc_info=(type(error), error, None))
            return
        self.received_body += chunk

    def request_json(self) -> dict[str, Any]:
        """The request's JSON body; 400 for a body that is not a JSON object. A body too large was answered 413
        while it arrived: the handler then ends there (web.Finish)."""
        if self.body_too_large:
            raise web.Finish()
        try:
            body = json.loads(bytes(self.received_body) or b"{}")
        except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deeply
            raise refusal(400, f"the body must be JSON: {self.body_example}") from None
        if not isinstance(body, dict):
            raise refusal(400, f"the body must be a JSON object: {self.body_example}")
        return body

    async def marked_notebook(self, api_path: object) -> tuple[Path, SetupSection]:
        """The notebook at `api_path` and its setup section; 4xx when it is unreadable or marks no setup cell."""
        notebook = await self.notebook_path(api_path)
        try:
            section = await asyncio.to_thread(read_setup_section, notebook)
        except NotebookError as error:
            raise self.notebook_error(str(api_path), error) from None
        if section is None:
            raise refusal(422, "the notebook has no setup cell: tag one `snapshot` or start it with %%snapshot")
        return notebook, section


class StatusHandler(JSONBodyHandler):
    """GET status?path=NB (the saved notebook) or POST status {path, cells} (cells being edited): its state."""

    max_body_bytes = MAX_CELLS_BODY_BYTES
    body_example = '{"path": "notebook.ipynb", "cells": [{"cell_type": "code", "source": "...", "metadata": {}}]}'

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Answer the saved notebook's snapshot state; 400 when the notebook is not valid."""
        api_path = self.get_query_argument("path", None)
        notebook = await self.notebook_path(api_path)
        await self.answer(str(api_path), notebook, None)

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Answer the state of the notebook with the cells in the body instead of the saved ones."""
        body = self.request_json()
        notebook = await self.notebook_path(body.get("path"))
        problem = cells_problem(body.get("cells"))
        metadata = body.get("metadata", {})
        if problem is None and not isinstance(metadata, dict):
            problem = "`metadata` must be an object"
        if problem is not None:
            raise refusal(400, f"{problem}: send {self.body_example}")
        await self.answer(str(body["path"]), notebook, {"cells": body["cells"], "metadata": metadata})

    async def answer(self, api_path: str, notebook: Path, edited: dict[str, Any] | None) -> None:
        """Write the state of `notebook`, as saved or with the `edited` cells, from all of the user's stores."""
        settings = self.settings_

        builds = self.builds

        def decide() -> tuple[NotebookState, dict[int, PointMark]]:
            stores = user_stores(settings)
            section = read_setup_section(notebook) if edited is None else setup_section_of(edited)
            state = notebook_state(stores, section, notebook, quota_bytes=settings.quota_bytes, builds=builds)
            return state, {} if section is None else point_markers(stores, section, notebook, os.environ)

        try:
            state, markers = await asyncio.to_thread(decide)
        except NotebookError as error:
            raise self.notebook_error(api_path, error) from None
        snapshot = state.snapshot
        positions = state.section.positions if state.section else ()
        reasons = [self.scrub(reason) for reason in state.reasons]
        points = [
            RestorePointMarker(
                cell=positions[cells - 1], cells=cells, state="current" if mark == "current" else "stale"
            )
            for cells, mark in markers.items()
        ]
        self.write_json(
            NotebookStatus(
                path=api_path,
                state=state.state,
                setup_hash=state.setup_hash,
                snapshot=snapshot.id if snapshot else None,
                size_bytes=snapshot.size_bytes if snapshot else None,
                age_s=round(time.time() - _timestamp(snapshot.created), 1) if snapshot else None,
                reasons=reasons,
                reason=reasons[0] if state.state in {"failed", "stale", "partial"} and reasons else None,
                build=state.build,
                queue_ahead=state.queue_ahead,
                setup_cells=list(positions),
                setup_end=positions[-1] if positions else None,
                source=None if snapshot is None else "shared" if state.in_shared_root else "own",
                restored_cells=state.restored_cells,
                points=points,
            )
        )


class BuildsHandler(JSONBodyHandler):
    """GET builds: this server's builds; POST builds {path}: queue (or join) the build of a notebook's snapshot."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """List the builds this server ran, runs and has queued."""
        self.write_json({"builds": [self.describe_build(build) for build in self.builds.builds.values()]})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Queue the build of the notebook named in the body (202), join the one queued or running, or 429."""
        api_path = self.request_json().get("path")
        notebook, section = await self.marked_notebook(api_path)
        store = await asyncio.to_thread(lambda: self.store)
        try:
            build = start_build(self.builds, notebook, section, store, self.settings_)
        except BuildQueueFull as error:
            raise refusal(429, str(error)) from None
        self.write_json(self.describe_build(build), status=202)


class ProgressHandler(SnapKernelHandler):
    """GET builds/ID or checks/ID: a build's or a check's progress and, once it ended, its result."""

    def initialize(self, kind: Literal["build", "check"]) -> None:
        """Serve builds or checks."""
        self.kind = kind

    @web.authenticated
    @authorized
    async def get(self, item_id: str) -> None:
        """Answer a build's state, log and result, or a check's state (running, equal, different,
        cold_differs or error) and differences."""
        if self.kind == "build":
            self.write_json(self.describe_build(known(self.builds.builds, item_id, "build")))
        else:
            self.write_json(self.describe_check(known(self.checks.checks, item_id, "check")))


class ChecksHandler(JSONBodyHandler):
    """POST checks {path, runs?}: start comparing a notebook's restored runs with its cold runs (202)."""

    body_example = '{"path": "notebook.ipynb", "runs": 2}'

    @web.authenticated
    @authorized
    async def post(self) -> None:
        """Start the check of the notebook named in the body in a thread; 429 when too many run."""
        body = self.request_json()
        runs = body.get("runs", 2)
        if not isinstance(runs, int) or isinstance(runs, bool) or not 1 <= runs <= MAX_RUNS:
            raise refusal(400, f"`runs` must be a whole number from 1 to {MAX_RUNS}: send {self.body_example}")
        api_path = body.get("path")
        notebook, _ = await self.marked_notebook(api_path)  # a notebook that marks no setup cell has nothing to check
        try:
            check = self.checks.start(notebook, str(api_path), runs, self.settings_)
        except ChecksBusy as error:
            raise refusal(429, str(error)) from None
        self.write_json(self.describe_check(check), status=202)


class KernelStartHandler(SnapKernelHandler):
    """GET kernels/ID: whether a kernel was restored or started cold, and why."""

    @web.authenticated
    @authorized
    async def get(self, kernel_id: str) -> None:
        """Answer how the kernel started."""
        try:
            manager = self.kernel_manager.get_kernel(kernel_id)
        except KeyError:
            raise refusal(404, f"no kernel {kernel_id}") from None
        report = getattr(manager.provisioner, "start_report", None)
        if report is None:
            raise refusal(404, f"kernel {kernel_id} is not a snapkernel kernel")
        self.write_json({**report, "reason": self.scrub(report["reason"]) if report.get("reason") else None})


class InfoHandler(SnapKernelHandler):
    """GET info: the extension's version and the kernelspecs whose kernels snapkernel starts (its presence)."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        """Answer the version and the snapkernel kernelspecs, read off the event loop."""
        self.write_json(ServerInfo(version=__version__, kernels=await asyncio.to_thread(self.snapkernel_kernels)))

    def snapkernel_kernels(self) -> list[str]:
        """Names of the allowed kernelspecs that start through snapkernel's provisioner."""
        specs = self.kernel_spec_manager.get_all_specs()
        return sorted(
            name
            for name, spec in specs.items()
            if self.settings_.allows_kernelspec(name)
            and spec.get("spec", {}).get("metadata", {}).get("kernel_provisioner", {}).get("provisioner_name")
            == PROVISIONER_NAME
        )


def known(items: Mapping[str, Known], item_id: str, kind: str) -> Known:
    """The item of this id (a build, a check); 404 naming the id, cut short, when there is none."""
    item = items.get(item_id)
    if item is None:
        raise refusal(404, f"no {kind} {shortened(item_id)}")
    return item


def shortened(name: str, limit: int = 120) -> str:
    """A name the client sent, cut to `limit` characters for a message."""
    return name if len(name) <= limit else name[: limit - 1] + "…"


@lru_cache(maxsize=4)
def resolved_root(root: Path) -> Path:
    """The server's root with its symbolic links resolved (once per root: it does not change while a server runs)."""
    return Path(os.path.realpath(root))


def _timestamp(created: str) -> float:
    return datetime.fromisoformat(created).timestamp()


def handlers(base_url: str) -> list[tuple[str, type[APIHandler]] | tuple[str, type[APIHandler], dict[str, Any]]]:
    """The API's routes under the server's base URL."""
    prefix = base_url.rstrip("/") + "/snapkernel/api"
    return [
        (f"{prefix}/snapshots", SnapshotsHandler),
        (f"{prefix}/snapshots/([A-Za-z0-9_-]+)", SnapshotHandler),
        (f"{prefix}/status", StatusHandler),
        (f"{prefix}/builds", BuildsHandler),
        (f"{prefix}/builds/([A-Za-z0-9_-]+)", ProgressHandler, {"kind": "build"}),
        (f"{prefix}/checks", ChecksHandler),
        (f"{prefix}/checks/([A-Za-z0-9_-]+)", ProgressHandler, {"kind": "check"}),
        (f"{prefix}/kernels/([A-Za-z0-9_-]+)", KernelStartHandler),
        (f"{prefix}/info", InfoHandler),
    ]
