"""A bound kernelspec's argv run the way VS Code's raw kernels run it: restored, interruptible, killable."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.manager import KernelManager

from snapkernel_engine import SnapshotStore, process
from snapkernel_engine.process import is_alive
from tests.editors.conftest import PARAMETERS_INSIDE, install_bound_kernelspec, parameters_notebook
from tests.helpers import SLEEPING_CELL, build, says_it_sleeps, wait_until

KERNEL_START_S = 60.0


@dataclass
class DirectKernel:
    """A kernel whose kernelspec argv a test ran itself, as an editor does, and a client on it."""

    launched: subprocess.Popen[bytes]
    client: BlockingKernelClient
    stderr: Path

    def run(self, code: str, timeout: float = 60) -> tuple[dict[str, Any], str, str]:
        """Execute `code`; return the reply's content, what it printed on stdout and on stderr."""
        streams = {"stdout": "", "stderr": ""}

        def hook(message: dict[str, Any]) -> None:
            if message["msg_type"] == "stream":
                streams[message["content"]["name"]] += message["content"]["text"]

        reply = self.client.execute_interactive(code, timeout=timeout, output_hook=hook)
        return reply["content"], streams["stdout"], streams["stderr"]

    def value(self, expression: str) -> Any:
        """The JSON value of `expression` in the kernel."""
        content, stdout, _ = self.run(f"import json as _json; print(_json.dumps({expression}))")
        assert content["status"] == "ok", content
        return json.loads(stdout.strip().splitlines()[-1])


def vscode_argv(argv: list[str], connection_file: Path) -> list[str]:
    """A kernelspec's argv as vscode-jupyter's raw kernel launcher rewrites it: `-f {connection_file}` removed,
    `--f=<path>` appended."""
    index = argv.index("-f")
    assert argv[index + 1] == "{connection_file}"
    return [*argv[:index], *argv[index + 2 :], f"--f={connection_file}"]


@pytest.fixture
def launch_directly(tmp_path: Path) -> Iterator[Any]:
    """Run kernelspec argvs as VS Code does; kill what is left of each at the end."""
    started: list[DirectKernel] = []

    def launch(argv: list[str], notebook: Path, store: Path, transport: str = "tcp", **settings: str) -> DirectKernel:
        runtime = tmp_path / "runtime"
        runtime.mkdir(exist_ok=True)
        connection_file = runtime / f"kernel-v3{secrets.token_hex(8)}.json"
        ip = "127.0.0.1" if transport == "tcp" else str(runtime / secrets.token_hex(4))  # ipc: a socket path prefix
        key = secrets.token_hex(16).encode()
        write_connection_file(str(connection_file), ip=ip, key=key, transport=transport)
        env = {name: value for name, value in os.environ.items() if name != "JPY_SESSION_NAME"}
        env.update(settings, SNAPKERNEL_STORE=str(store))
        stderr = tmp_path / f"launcher-{len(started)}.stderr"
        with stderr.open("wb") as log:
            launched = subprocess.Popen(
                vscode_argv(argv, connection_file), cwd=notebook.parent, env=env, stdout=log, stderr=log
            )
        client = BlockingKernelClient(connection_file=str(connection_file))
        client.load_connection_file()
        # No heartbeat channel: without a kernel manager, jupyter_client takes a heartbeat not yet answered (a
        # kernel still starting on a loaded machine) for a dead kernel. Editors wait for kernel_info instead.
        client.start_channels(hb=False)
        kernel = DirectKernel(launched, client, stderr)
        started.append(kernel)
        client.wait_for_ready(timeout=KERNEL_START_S)
        return kernel

    yield launch
    for kernel in started:
        kernel.client.stop_channels()
        members = process.tree(kernel.launched.pid) if kernel.launched.poll() is None else []
        kernel.launched.kill()
        kernel.launched.wait()
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_bound_kernelspec_run_as_vscode_runs_it_restores_interrupts_and_dies_with_its_launcher(
    tmp_path: Path, jupyter_path: Path, launch_directly: Any
) -> None:
    """VS Code's launch, exactly: the kernel restores (it says so), SIGINT interrupts a cell, SIGKILL of the
    launched process leaves no process of the kernel behind."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "train.ipynb", PARAMETERS_INSIDE)
    snapshot = build(notebook, store)
    spec = install_bound_kernelspec(notebook, jupyter_path, store, "snapkernel-vscode-train")
    assert "train.ipynb" in str(spec["display_name"])

    kernel = launch_directly(spec["argv"], notebook, store)
    info = kernel.client.kernel_info(reply=True, timeout=30)
    assert info["content"]["status"] == "ok"
    content, stdout, _ = kernel.run("print('result', result, steps)")
    assert content["status"] == "ok" and stdout == "result 41 [1]\n"
    start = kernel.value("vars(get_ipython().kernel.start_info)")
    assert (start["mode"], start["snapshot"]) == ("restored", snapshot)
    assert (start["notebook"], start["named_by"]) == (str(notebook), "kernelspec snapkernel-vscode-train")
    _, status, _ = kernel.run("%snapshot status")
    assert f"notebook: {notebook} (named by kernelspec snapkernel-vscode-train)" in status

    message_id = kernel.client.execute(SLEEPING_CELL)
    wait_until(lambda: _sleeping(kernel.client, message_id), 30, "the kernel running the sleeping cell")
    os.kill(kernel.launched.pid, signal.SIGINT)
    reply = kernel.client.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == message_id
    assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KeyboardInterrupt")

    members = process.tree(kernel.launched.pid)
    assert len(members) >= 3, members  # the launcher, the restore's namespace helpers and the kernel
    os.kill(kernel.launched.pid, signal.SIGKILL)
    kernel.launched.wait()
    wait_until(lambda: not any(is_alive(pid) for pid in members), 30, "no process of the kernel left")


def _sleeping(client: BlockingKernelClient, message_id: str) -> bool:
    """Whether request `message_id` printed that it sleeps now (reads iopub until it did, or is empty)."""
    while True:
        try:
            message = client.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            return False
        if says_it_sleeps(message, message_id):
            return True


def test_without_a_snapshot_the_launched_process_becomes_the_kernel_says_why_and_the_next_launch_restores(
    tmp_path: Path, jupyter_path: Path, launch_directly: Any
) -> None:
    """A launch with nothing to restore runs the kernel cold in place (the launched process is the kernel),
    says why on stderr and with the first cell, and builds the snapshot that the next launch restores."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "fresh.ipynb", PARAMETERS_INSIDE)
    spec = install_bound_kernelspec(notebook, jupyter_path, store, "snapkernel-vscode-fresh")

    cold = launch_directly(spec["argv"], notebook, store)
    _, _, first_stderr = cold.run("40 + 1")
    assert "snapkernel: cold start (no snapshot yet)" in first_stderr
    assert "snapkernel: cold start (no snapshot yet)" in cold.stderr.read_text()
    assert cold.value("__import__('os').getpid()") == cold.launched.pid
    for source, _ in PARAMETERS_INSIDE:
        assert cold.run(source)[0]["status"] == "ok"
    cold_result = cold.run("print('result', result, steps)")[1]
    assert cold.value("vars(get_ipython().kernel.start_info)")["mode"] == "cold"

    wait_until(lambda: SnapshotStore(store).list(), 120, "the snapshot built in the background")
    wait_until(lambda: not SnapshotStore(store).list() or _whole_setup_built(store), 120, "the whole setup built")
    restored = launch_directly(spec["argv"], notebook, store)
    assert restored.value("vars(get_ipython().kernel.start_info)")["mode"] == "restored"
    assert restored.run("print('result', result, steps)")[1] == cold_result == "result 41 [1]\n"


def _whole_setup_built(store: Path) -> bool:
    """Whether the store holds the snapshot of the whole setup (not only its restore points)."""
    return any(manifest.labels.get("cells") == str(len(PARAMETERS_INSIDE)) for manifest in SnapshotStore(store).list())


def test_a_provisioner_start_of_a_bound_kernelspec_restores_once_and_a_cold_one_is_the_kernel_itself(
    tmp_path: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through jupyter_client (as papermill and nbclient start kernels) the provisioner restores, and the argv's
    launcher never runs; a cold start runs the argv, whose launcher hands over to the kernel without a plan."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "once.ipynb", PARAMETERS_INSIDE)
    snapshot = build(notebook, store)
    install_bound_kernelspec(notebook, jupyter_path, store, "snapkernel-once")
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setenv("SNAPKERNEL_STORE", str(store))
    for cold in (False, True):
        manager = KernelManager(kernel_name="snapkernel-once")
        env = {**os.environ, **({"SNAPKERNEL_COLD": "1"} if cold else {})}
        manager.start_kernel(cwd=str(notebook.parent), env=env)
        try:
            report = manager.provisioner.start_report  # type: ignore[union-attr]
            assert (report["start"], report["snapshot"]) == (("cold", None) if cold else ("restored", snapshot))
            if cold:  # the launched argv becomes the kernel, with no plan of its own
                kernel_pid = manager.provisioner.pid  # type: ignore[union-attr]
                wait_until(functools.partial(_runs_the_kernel, kernel_pid), 30, "the launched process is the kernel")
                assert report["reason"] == "cold start requested"
            launchers = [pid for pid in process.tree(os.getpid()) if "jupyter_snapkernel.launcher" in _cmdline(pid)]
            assert launchers == [], [_cmdline(pid) for pid in launchers]
        finally:
            manager.shutdown_kernel(now=True)


def _runs_the_kernel(pid: int) -> bool:
    """Whether a process runs the kernel itself (python -m jupyter_snapkernel.kernel.app)."""
    return "jupyter_snapkernel.kernel.app" in _cmdline(pid)


def _cmdline(pid: int) -> str:
    """A process's command line, spaces between its arguments ("" once it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize(("ending", "status"), [("shutdown", 0), ("os._exit(3)", 3), ("SIGTERM", 128 + signal.SIGTERM)])
def test_the_launched_process_of_a_restored_kernel_exits_with_the_kernels_status(
    tmp_path: Path, jupyter_path: Path, launch_directly: Any, ending: str, status: int
) -> None:
    """The launcher stands for its restored kernel: a shutdown request, the kernel's own exit and a SIGTERM of
    the launcher each end both, and the launcher exits with the kernel's status (128 + N for signal N)."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "ends.ipynb", PARAMETERS_INSIDE)
    build(notebook, store)
    spec = install_bound_kernelspec(notebook, jupyter_path, store, "snapkernel-ends")
    kernel = launch_directly(spec["argv"], notebook, store)
    assert kernel.value("get_ipython().kernel.start_info.mode") == "restored"
    members = process.tree(kernel.launched.pid)
    if ending == "shutdown":
        kernel.client.shutdown()
    elif ending == "SIGTERM":
        kernel.launched.send_signal(signal.SIGTERM)
    else:
        kernel.client.execute(f"import os; {ending}")
    assert kernel.launched.wait(30) == status
    wait_until(lambda: not any(is_alive(pid) for pid in members), 30, "no process of the kernel left")


def test_a_kernelspec_run_directly_restores_in_a_network_of_its_own_only_over_ipc(
    tmp_path: Path, jupyter_path: Path, launch_directly: Any
) -> None:
    """restore_network "own": an editor's ipc connection file gets a network namespace of its own; its TCP one
    keeps the host's network, which the editor connects through."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "net.ipynb", PARAMETERS_INSIDE)
    build(notebook, store)
    spec = install_bound_kernelspec(notebook, jupyter_path, store, "snapkernel-vscode-net")
    host = os.readlink("/proc/self/ns/net")
    networks = {}
    for transport in ("ipc", "tcp"):
        kernel = launch_directly(spec["argv"], notebook, store, transport, SNAPKERNEL_RESTORE_NETWORK="own")
        assert kernel.value("get_ipython().kernel.start_info.mode") == "restored"
        networks[transport] = kernel.value("os.readlink('/proc/self/ns/net')")
        content, stdout, _ = kernel.run("print('result', result, steps)")
        assert content["status"] == "ok" and stdout == "result 41 [1]\n"
    assert networks["tcp"] == host and networks["ipc"] != host
