"""Build a notebook's snapshot: run its setup cells in a fresh kernel process, then checkpoint it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from engine import Manifest, SnapshotError, SnapshotStore
from engine.inputs import fingerprint_inputs
from engine.privileges import current, own_user_namespace_command

from .config import env_flag
from .setup_section import SetupSection, read_setup_section
from .status import builds_dir

DEFAULT_BUILD_TIMEOUT_S = 600.0
Progress = Callable[[dict[str, Any]], None]


class BuildError(SnapshotError):
    """The setup cells failed, a hook failed, or the checkpoint was refused."""


class BuildInProgress(BuildError):
    """Another build for the same setup section is running."""


def build_environment(notebook: Path, store: SnapshotStore) -> dict[str, str]:
    """The environment a build kernel starts with (the launch's replaces it at each restore)."""
    env = {key: value for key, value in os.environ.items() if key not in {"JPY_PARENT_PID", "PYTHONSTARTUP"}}
    env["JPY_SESSION_NAME"] = str(notebook)
    env["SNAPKERNEL_STORE"] = str(store.root)
    env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return env


def _drain(stream: IO[bytes], sink: list[str]) -> None:
    for line in iter(stream.readline, b""):
        sink.append(line.decode(errors="replace"))


def _read_event(fd: int, deadline: float, buffer: bytearray) -> dict[str, Any]:
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BuildError("the build timed out")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError
            buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return json.loads(line)


def _write_record(store: SnapshotStore, setup_hash: str, **record: Any) -> None:
    path = builds_dir(store) / f"{setup_hash}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(record))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def build_snapshot(
    notebook: str | Path,
    store: SnapshotStore,
    *,
    section: SetupSection | None = None,
    progress: Progress | None = None,
    timeout: float = DEFAULT_BUILD_TIMEOUT_S,
    gpu_state: bool | None = None,
) -> Manifest:
    """Build and publish the snapshot of a notebook's setup section; raise BuildError on failure.

    `gpu_state` None takes the notebook's own choice (metadata ``snapkernel.gpu_state``), else
    $SNAPKERNEL_GPU_STATE, else includes GPU state.
    """
    notebook = Path(notebook).resolve()
    if gpu_state is None:
        gpu_state = notebook_gpu_state(notebook)
    section = section or read_setup_section(notebook)
    if section is None:
        raise BuildError(f"{notebook.name} has no setup cell: tag one `snapshot` or start it with %%snapshot")
    store.ensure_layout()
    builds_dir(store).mkdir(mode=0o700, exist_ok=True)
    lock_fd = os.open(builds_dir(store) / f"{section.setup_hash}.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildInProgress(f"a snapshot of {notebook.name} is already being built") from None
        _write_record(store, section.setup_hash, state="building", pid=os.getpid(), started=time.time())
        try:
            manifest = _run_build(notebook, store, section, progress or (lambda event: None), timeout, gpu_state)
        except BaseException as error:
            _write_record(
                store,
                section.setup_hash,
                state="failed",
                error=str(error),
                finished=time.time(),
                fingerprint=store.fingerprint_digest(),  # automatic builds retry once this changes
            )
            raise
        (builds_dir(store) / f"{section.setup_hash}.json").unlink(missing_ok=True)
        return manifest
    finally:
        os.close(lock_fd)


def notebook_gpu_state(notebook: Path, configured: bool | None = None) -> bool:
    """Whether a notebook's snapshot includes GPU state: its metadata, else `configured`, else
    $SNAPKERNEL_GPU_STATE, else yes."""
    try:
        chosen = json.loads(notebook.read_text()).get("metadata", {}).get("snapkernel", {}).get("gpu_state")
    except (OSError, ValueError, AttributeError):
        chosen = None
    if isinstance(chosen, bool):
        return chosen
    if configured is not None:
        return configured
    return env_flag("SNAPKERNEL_GPU_STATE", True)


def _run_build(
    notebook: Path, store: SnapshotStore, section: SetupSection, progress: Progress, timeout: float, gpu_state: bool
) -> Manifest:
    control_read, control_write = os.pipe()
    report_read, report_write = os.pipe()
    # Without a grant CRIU can only dump a kernel that runs in a user namespace of its own.
    prefix = own_user_namespace_command() if current().mode == "user-namespace" else []
    environment = build_environment(notebook, store)
    command = [
        *prefix, sys.executable, "-m", "jupyter_snapkernel.kernelapp", "--snapshot-build",
        f"--control-fd={control_read}", f"--report-fd={report_write}",
    ]  # fmt: skip
    kernel = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        pass_fds=(control_read, report_write),
        cwd=notebook.parent,
        env=environment,
        start_new_session=True,  # CRIU dumps only a tree whose root leads its own session
    )
    os.close(report_write)
    os.close(control_read)
    log: list[str] = []
    for stream in (kernel.stdout, kernel.stderr):
        threading.Thread(target=_drain, args=(stream, log), daemon=True).start()
    deadline = time.monotonic() + timeout
    buffer = bytearray()
    started = time.perf_counter()
    try:
        os.write(control_write, (json.dumps({"cells": list(section.cells)}) + "\n").encode())
        while True:
            try:
                event = _read_event(report_read, deadline, buffer)
            except EOFError:
                kernel.wait(timeout=10)
                raise BuildError(
                    f"the build kernel exited ({kernel.returncode}) before the snapshot:\n" + "".join(log[-20:])
                ) from None
            progress(event)
            if event["event"] == "failed":
                where = f"setup cell {event['index'] + 1}" if event.get("index") is not None else "a hook"
                raise BuildError(f"{where} of {notebook.name} failed:\n{event['error']}")
            if event["event"] == "ready":
                inputs = event.get("inputs") or {}
                break
        setup_s = time.perf_counter() - started
        progress({"event": "checkpoint"})
        return store.checkpoint(
            kernel.pid,
            section.setup_hash,
            labels={"notebook": str(notebook), "cells": str(len(section.cells)), "setup_s": f"{setup_s:.3f}"},
            pipes={"stdin": 0, "stdout": 1, "stderr": 2, "control": control_read, "report": report_write},
            leave_running=False,
            gpu_state=gpu_state,
            inputs=fingerprint_inputs(inputs.get("files", []), inputs.get("variables", []), environment),
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(kernel.pid, signal.SIGKILL)
        kernel.wait()
        for fd in (control_write, report_read):
            os.close(fd)
