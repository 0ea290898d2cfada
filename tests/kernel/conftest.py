"""Fixtures for real snapkernel kernels behind a real jupyter_server."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.asynchronous.client import AsyncKernelClient
from traitlets.config import Config

from jupyter_snapkernel.paths import open_store
from snapkernel_engine import SnapshotStore

REPO = Path(__file__).resolve().parents[2]
SETUP_CELLS = [
    "import os, random, subprocess, threading, time\nimport numpy as np\n"
    "matrix = np.arange(1_000_000, dtype=np.float64).reshape(1000, 1000)\nprint('setup total', matrix.sum())\n"
    "!echo from-a-setup-shell-command\n"
    "targets = []\nfor name in os.listdir('/proc/self/fd'):\n    try:\n"
    "        targets.append(os.readlink('/proc/self/fd/' + name))\n    except FileNotFoundError:\n        pass\n"
    "sockets_at_build = [target for target in targets if target.startswith('socket:')]",
    "ticks = [0]\ndef tick():\n    while True:\n        ticks[0] += 1\n        time.sleep(0.01)\n"
    "ticker = threading.Thread(target=tick, daemon=True)\nticker.start()\n"
    "helper = subprocess.Popen(['sleep', '600'])\nsetup_value = 42\nsetup_value * 2",
]
AFTER_SETUP = "print('after setup', setup_value + 1)"
ABORT_RETRIES = 5


def write_notebook(path: Path, cells: list[str], marked: int, after: list[str] | None = None) -> Path:
    """Write a notebook whose code cell `marked` carries the `snapshot` tag."""
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "snapkernel", "display_name": "Python 3 (snapshots)", "language": "python"}
    for index, source in enumerate([*cells, *(after or [])]):
        cell = nbformat.v4.new_code_cell(source)
        if index == marked:
            cell.metadata["tags"] = ["snapshot"]
        book.cells.append(cell)
    nbformat.write(book, path)
    return path


@pytest.fixture
def snapkernel_spec(jp_data_dir: Path) -> Path:
    """Install the wheel's kernelspec into the test's Jupyter data dir."""
    target = jp_data_dir / "kernels" / "snapkernel"
    shutil.copytree(REPO / "share" / "jupyter" / "kernels" / "snapkernel", target)
    return target


@pytest.fixture
def store_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "snapshots"
    monkeypatch.setenv("SNAPKERNEL_STORE", str(root))
    return root


@pytest.fixture
def kernel_store(store_root: Path) -> SnapshotStore:
    return open_store(store_root)


@pytest.fixture
def jp_server_config() -> Config:
    # Builds start only when a test asks for one.
    return Config({"SnapKernelSettings": {"auto_build": False, "spare_kernels": False}})


@pytest.fixture
def notebook(jp_root_dir: Path) -> Path:
    return write_notebook(jp_root_dir / "analysis.ipynb", SETUP_CELLS, marked=1, after=[AFTER_SETUP])


@dataclass
class Execution:
    """A finished execute request: its reply and what it published."""

    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        return "".join(o["content"]["text"] for o in self.outputs if o["msg_type"] == "stream")

    @property
    def status(self) -> str:
        return self.reply["content"]["status"]


class KernelSession:
    """A client on a kernel started by the server."""

    def __init__(self, server: Any, kernel_id: str) -> None:
        self.server = server
        self.kernel_id = kernel_id
        self.manager = server.kernel_manager.get_kernel(kernel_id)
        self.client: AsyncKernelClient = self.manager.client()
        self.client.start_channels()

    async def execute(self, code: str, timeout: float = 60) -> Execution:
        outputs: list[dict[str, Any]] = []

        def hook(message: dict[str, Any]) -> None:
            if message["msg_type"] in {"stream", "display_data", "execute_result", "error"}:
                outputs.append(message)

        reply = await self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return Execution(reply, outputs)

    async def value(self, expression: str) -> Any:
        code = f"import json as _json; print(_json.dumps({expression}))"
        result = await self.execute(code)
        for _ in range(ABORT_RETRIES):
            # Right after an error ipykernel aborts what reaches it before its own "stop aborting" message
            # (its shell-channel thread posts that one after the error reply): cold kernels alike.
            if result.status != "aborted":
                break
            result = await self.execute(code)
        assert result.status == "ok", result.reply["content"]
        return json.loads(result.stdout.strip().splitlines()[-1])

    @property
    def restored(self) -> bool:
        from jupyter_snapkernel.provisioner import RestoredKernelProcess

        return isinstance(self.manager.provisioner.process, RestoredKernelProcess)

    def close(self) -> None:
        self.client.stop_channels()


@pytest.fixture
def connect(jp_serverapp: Any) -> Any:
    """Connect a client to a kernel the server started; every client is closed after the test."""
    sessions: list[KernelSession] = []

    async def to(kernel_id: str) -> KernelSession:
        session = KernelSession(jp_serverapp, kernel_id)
        sessions.append(session)
        await session.client.wait_for_ready(timeout=60)  # iopub is subscribed from here on
        return session

    yield to
    for session in sessions:
        session.close()


@pytest.fixture
def open_session(jp_fetch: Any, jp_root_dir: Path, snapkernel_spec: Path, connect: Any) -> Any:
    """Start a notebook session through the sessions API and return a client on its kernel."""

    async def start(notebook: Path, name: str | None = None) -> KernelSession:
        body = {
            "path": str(notebook.relative_to(jp_root_dir)),
            "name": name or notebook.name,
            "type": "notebook",
            "kernel": {"name": "snapkernel"},
        }
        response = await jp_fetch("api", "sessions", method="POST", body=json.dumps(body))
        return await connect(json.loads(response.body)["kernel"]["id"])

    return start


@pytest.fixture
def open_kernel(jp_serverapp: Any, jp_root_dir: Path, snapkernel_spec: Path, connect: Any) -> Any:
    """Start another kernel for a notebook through the server's kernel manager (as a second session would)."""
    launches = itertools.count()

    async def start(notebook: Path) -> KernelSession:
        kernel_id = await jp_serverapp.kernel_manager.start_kernel(
            kernel_name="snapkernel",
            path=str(notebook.parent.relative_to(jp_root_dir)),
            env={**os.environ, "JPY_SESSION_NAME": str(notebook), "LAUNCH_TOKEN": f"token-{next(launches)}"},
        )
        return await connect(kernel_id)

    return start
