"""Helpers shared by tests of every layer (no fixtures: plain functions; the fixtures live in tests/plugin.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import nbformat

from tests.servers import JUPYTER

if TYPE_CHECKING:
    from snapkernel_engine import RestoredTree

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.1  # how often a wait looks at its condition again

# -- waiting ------------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = POLL_S) -> Any:
    """Poll `condition` until it returns something true and return that; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} (waited {timeout_s} s)"
        time.sleep(interval_s)
    return result


async def wait_until_async(
    condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = POLL_S
) -> Any:
    """`wait_until` for a test on an event loop: the loop keeps running between looks."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        assert time.monotonic() < deadline, f"{what} (waited {timeout_s} s)"
        await asyncio.sleep(interval_s)
    return result


# -- files --------------------------------------------------------------------------------------------


def tree_digest(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: a file's bytes' hash, mode and owner; a folder's mode and owner."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        digest[str(path.relative_to(folder))] = f"{content} {info.st_mode:o} {info.st_uid}"
    return digest


def corrupt_pages(snapshot: Path) -> None:
    """Flip one byte of the largest pages image in a snapshot's folder: its sha256 check then fails."""
    pages = max((snapshot / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    with open(pages, "r+b") as handle:
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 1]))


async def open_after_corrupting_its_snapshot(open_session: Any, notebook: Path, store: Any) -> KernelSession:
    """Build a notebook's snapshot, flip a byte of its pages, then open a session of the notebook: it starts cold,
    and its kernel is told that the restore failed on the corrupted image."""
    from jupyter_snapkernel.notebook.builder import build_snapshot

    manifest = build_snapshot(notebook, store)
    corrupt_pages(store.snapshots_dir / manifest.id)
    session: KernelSession = await open_session(notebook)
    assert not session.restored
    reason = await session.value("get_ipython().kernel.start_info.reason")
    assert f"restore of snapshot {manifest.id} failed" in reason
    assert "is corrupted (sha256" in reason
    return session


def network_namespace(pid: int) -> str:
    """The network namespace a process runs in (`net:[INODE]`)."""
    return os.readlink(f"/proc/{pid}/ns/net")


# -- notebooks ----------------------------------------------------------------------------------------

# A setup with numpy data, a shell command, a thread, a child process and a value; sockets seen at build.
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
PRINTING_SETUP = ["value = 21\nprint('setup done')"]  # the smallest setup cell, and one that prints


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


# -- the command line ---------------------------------------------------------------------------------


def snapkernel(*args: str, store: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `jupyter snapkernel --store STORE ARGS…` and return what it did."""
    return subprocess.run(
        [str(JUPYTER), "snapkernel", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        check=False,
    )


def build(notebook: Path, store: Path) -> str:
    """Build a notebook's snapshot; return its id."""
    built = snapkernel("build", "--quiet", str(notebook), store=store)
    assert built.returncode == 0, built.stdout + built.stderr
    return built.stdout.split()[1].rstrip(":")


def run_json(
    notebook: Path, store: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    """`run NB --json ARGS…`: the exit code, the JSON summary and stderr (which must hold no traceback)."""
    result = snapkernel("run", str(notebook), "--json", *args, store=store, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout), result.stderr


def outputs(cell: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """A cell's outputs of one type."""
    return [output for output in cell["outputs"] if output["output_type"] == kind]


def helper_processes(store: Path) -> list[str]:
    """Command lines of live processes that restore from `store` (a restored tree's namespace helpers)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(store) in text:
            found.append(text)
    return found


# -- kernels behind a server --------------------------------------------------------------------------

ABORT_RETRIES = 5


@dataclass
class Execution:
    """A finished execute request: its reply and what it published."""

    reply: dict[str, Any]
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stdout(self) -> str:
        """Everything the request printed."""
        return "".join(o["content"]["text"] for o in self.outputs if o["msg_type"] == "stream")

    @property
    def status(self) -> str:
        """The reply's status: ok, error or aborted."""
        return self.reply["content"]["status"]


# A cell that blocks until it is interrupted (no time of its own to outlast a test's wait): SIGINT interrupts
# the wait for a lock, as it would a sleep.
SLEEPING_CELL = "import threading; print('sleeping', flush=True); threading.Event().wait()"


def says_it_sleeps(message: dict[str, Any], message_id: str) -> bool:
    """Whether iopub `message` is request `message_id` printing that SLEEPING_CELL's code runs now.

    An interrupt waits for it: a SIGINT between the busy status and the cell's code is not the cell's."""
    text = message["content"].get("text", "") if message["msg_type"] == "stream" else ""
    return message["parent_header"].get("msg_id") == message_id and "sleeping" in text


class KernelSession:
    """A client on a kernel started by the server."""

    def __init__(self, server: Any, kernel_id: str) -> None:
        from jupyter_client.asynchronous.client import AsyncKernelClient

        self.server = server
        self.kernel_id = kernel_id
        self.manager = server.kernel_manager.get_kernel(kernel_id)
        self.client: AsyncKernelClient = self.manager.client()
        self.client.start_channels()

    async def execute(self, code: str, timeout: float = 60) -> Execution:
        """Run `code` and collect what it published."""
        outputs: list[dict[str, Any]] = []

        def hook(message: dict[str, Any]) -> None:
            if message["msg_type"] in {"stream", "display_data", "execute_result", "error"}:
                outputs.append(message)

        reply = await self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return Execution(reply, outputs)

    async def value(self, expression: str) -> Any:
        """The JSON value of `expression` in the kernel."""
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

    async def start_sleeping_cell(self, timeout: float = 30) -> str:
        """Send SLEEPING_CELL and return its request's id once its code runs."""
        message_id = self.client.execute(SLEEPING_CELL)
        deadline = time.monotonic() + timeout
        while True:
            # Never negative: jupyter_client hands it to zmq's poll, which then waits for ever.
            remaining = max(0.0, deadline - time.monotonic())
            if says_it_sleeps(await self.client.get_iopub_msg(timeout=remaining), message_id):
                return message_id

    @property
    def restored(self) -> bool:
        """Whether the kernel was restored from a snapshot (not started cold)."""
        from jupyter_snapkernel.launch.provisioner import RestoredKernelProcess

        return isinstance(self.manager.provisioner.process, RestoredKernelProcess)

    def close(self) -> None:
        """Stop the client's channels."""
        self.client.stop_channels()


# -- processes for the engine to checkpoint -----------------------------------------------------------

WORKLOAD = REPO / "tests" / "engine" / "workload.py"


@dataclass
class Workload:
    """A running workload process with pipes on its stdin and stdout."""

    process: subprocess.Popen[str]
    checksum: str

    @property
    def pid(self) -> int:
        """The workload's process id."""
        return self.process.pid

    def ask(self, command: str) -> dict[str, object]:
        """Send the live workload one command; return its JSON answer."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())


@dataclass
class Conversation:
    """Pipes to talk to a restored workload."""

    tree: RestoredTree
    to_tree: IO[str]
    from_tree: IO[str]

    def ask(self, command: str) -> dict[str, object]:
        """Send one command line; return the workload's JSON answer."""
        self.to_tree.write(command + "\n")
        self.to_tree.flush()
        return json.loads(self.from_tree.readline())


def start_workload(size_mb: int) -> Workload:
    """Start the workload in its own session and wait until its data is in memory."""
    process = subprocess.Popen(
        [sys.executable, str(WORKLOAD), str(size_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        # pytest captures into deleted temp files; CRIU restores those as "ghost" files in the
        # same directory, which concurrent restores would race on.
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    ready = json.loads(process.stdout.readline())
    return Workload(process, str(ready["checksum"]))


def stop_session(pid: int) -> None:
    """Kill every process of the session led by `pid`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def pipes_for_restore() -> tuple[dict[str, int], IO[str], IO[str], list[int]]:
    """Make new stdin/stdout pipes: the fds to hand over, our ends, and the fds to close after."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    handed = {"stdin": stdin_read, "stdout": stdout_write}
    return handed, os.fdopen(stdin_write, "w"), os.fdopen(stdout_read), [stdin_read, stdout_write]
