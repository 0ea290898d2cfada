"""SIGTERM stops a real jupyter server within 10 s in every state, and no process it started outlives it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from jupyter_client import BlockingKernelClient

from jupyter_snapkernel.paths import open_store
from jupyter_snapkernel.setup_section import read_setup_section
from jupyter_snapkernel.status import build_record
from tests.cli.test_run import SETUP, build
from tests.kernel.conftest import write_notebook
from tests.users import free_port

JUPYTER = Path(sys.executable).with_name("jupyter")
EXIT_LIMIT_S = 10.0
SLEEPING_SETUP = ["import time\ntime.sleep(60)"]
RESTORE_HELPER = "engine.restore_init"  # the init of a restored tree's PID namespace: one per restored kernel


class Server:
    """A `jupyter server` subprocess with the snapkernel extension, reached over HTTP with a token."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.root = tmp_path / "notebooks"
        self.root.mkdir(exist_ok=True)
        self.store = tmp_path / "store"
        self.runtime = tmp_path / "runtime"
        self.log_path = tmp_path / "server.log"
        port, token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{port}"
        command = [
            str(JUPYTER), "server", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={self.root}",
        ]  # fmt: skip
        environment = {
            **os.environ,
            "SNAPKERNEL_STORE": str(self.store),
            "JUPYTER_RUNTIME_DIR": str(self.runtime),
            "SNAPKERNEL_AUTO_BUILD": "0",
            "SNAPKERNEL_SPARE_KERNELS": "0",
            **env,
        }
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command, cwd=self.root, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {token}"
        self.wait_until(lambda: self._answers(), 60, "the server did not start")

    def _answers(self) -> bool:
        """Whether the server answers its status URL."""
        try:
            return self.http.get(f"{self.url}/api/status", timeout=1).ok
        except requests.RequestException:
            return False

    def log(self) -> str:
        """The server's output so far."""
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll `condition` until it holds; fail with `what` and the server's log otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert self.process.poll() is None, f"the server exited:\n{self.log()[-4000:]}"
            assert time.monotonic() < deadline, f"{what}:\n{self.log()[-4000:]}"
            time.sleep(0.1)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An HTTP request to the server."""
        return self.http.request(method, f"{self.url}/{path}", timeout=120, **kwargs)

    def start_session(self, notebook: str, kernel: str = "snapkernel") -> requests.Response:
        """Ask for a new notebook session (a kernel of its own) through the sessions API."""
        body = {"path": f"{notebook}-{secrets.token_hex(4)}", "name": notebook, "type": "notebook"}
        return self.api("POST", "api/sessions", json={**body, "kernel": {"name": kernel}})

    def ready_kernel(self, notebook: str) -> dict[str, Any]:
        """Start a session on a notebook, wait until its kernel answers; return how it started."""
        response = self.start_session(notebook)
        assert response.status_code == 201, response.text + self.log()[-4000:]
        kernel_id = response.json()["kernel"]["id"]
        client = BlockingKernelClient()
        client.load_connection_file(str(self.runtime / f"kernel-{kernel_id}.json"))
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
        finally:
            client.stop_channels()
        return self.api("GET", f"snapkernel/api/kernels/{kernel_id}").json()

    def processes(self, marker: str) -> list[psutil.Process]:
        """The server's descendants whose command line holds `marker`."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if marker in " ".join(child.cmdline()):
                    found.append(child)
            except psutil.NoSuchProcess:
                continue
        return found

    def terminate(self) -> tuple[float, list[psutil.Process]]:
        """SIGTERM the server; return the seconds it took to exit and its descendants still alive 3 s later."""
        tree = psutil.Process(self.process.pid).children(recursive=True)
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            return float("inf"), tree
        exited = time.monotonic() - started
        _, alive = psutil.wait_procs(tree, timeout=3)  # a zombie counts as alive: nobody reaped it
        return exited, alive

    def kill(self) -> None:
        """Kill whatever is left of the server's session (after a failed test)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def notebooks(tmp_path: Path) -> Path:
    """The servers' root directory."""
    root = tmp_path / "notebooks"
    root.mkdir()
    return root


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start snapkernel jupyter servers in the test's directory; whatever a test leaves is killed after it."""
    servers: list[Server] = []

    def start(**env: str) -> Server:
        server = Server(tmp_path, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def assert_stops_cleanly(server: Server, expected: list[psutil.Process]) -> None:
    """SIGTERM stops the server within the limit, and every process it started is gone, none a zombie."""
    assert all(process.is_running() for process in expected)
    exited, alive = server.terminate()
    log = server.log()
    assert exited < EXIT_LIMIT_S, f"the server took {exited:.1f} s to exit:\n{log[-4000:]}"
    assert alive == [], f"{[(process.pid, process.cmdline()) for process in alive]} outlived the server"
    assert "Kernel does not exist" not in log, log[-4000:]


def test_idle_server_exits_promptly_on_sigterm(start_server: Callable[..., Server]) -> None:
    """A server that never started a kernel exits at once."""
    server = start_server()
    assert_stops_cleanly(server, [])


def test_restored_kernel_and_its_spare_are_stopped_with_the_server(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., Server]
) -> None:
    """A restored kernel and the spare restored after it both end with the server, which exits promptly."""
    write_notebook(notebooks / "restored.ipynb", SETUP, marked=0)
    build(notebooks / "restored.ipynb", tmp_path / "store")
    server = start_server(SNAPKERNEL_SPARE_KERNELS="1")
    assert server.ready_kernel("restored.ipynb")["start"] == "restored"
    server.wait_until(lambda: len(server.processes(RESTORE_HELPER)) == 2, 60, "no spare kernel was restored")
    assert_stops_cleanly(server, server.processes(RESTORE_HELPER))


def test_cold_kernel_is_stopped_with_the_server(notebooks: Path, start_server: Callable[..., Server]) -> None:
    """A kernel that started cold (no snapshot yet) ends with the server, which exits promptly."""
    write_notebook(notebooks / "cold.ipynb", SETUP, marked=0)
    server = start_server()
    assert server.ready_kernel("cold.ipynb")["start"] == "cold"
    assert_stops_cleanly(server, server.processes("jupyter_snapkernel.kernelapp"))


@pytest.mark.parametrize("started_by", ["cold-start", "rest-api"])
def test_build_running_its_setup_cell_is_stopped_and_can_run_again(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., Server], started_by: str
) -> None:
    """A build in a 60 s setup cell (automatic or asked for) is stopped at SIGTERM and not recorded as failed."""
    notebook = write_notebook(notebooks / "slow.ipynb", SLEEPING_SETUP, marked=0)
    server = start_server(SNAPKERNEL_AUTO_BUILD="1")
    if started_by == "cold-start":
        assert server.ready_kernel("slow.ipynb")["start"] == "cold"
    else:
        response = server.api("POST", "snapkernel/api/builds", json={"path": "slow.ipynb"})
        assert response.status_code == 202, response.text

    def in_setup_cell() -> bool:
        """Whether the notebook's build runs its setup cell now."""
        status = server.api("GET", "snapkernel/api/status", params={"path": "slow.ipynb"}).json()
        if not status.get("build"):
            return False
        return server.api("GET", f"snapkernel/api/builds/{status['build']}").json()["current_cell"] == 1

    server.wait_until(in_setup_cell, 60, "the build did not reach its setup cell")
    build_kernels = server.processes("--snapshot-build")
    assert len(build_kernels) == 1
    assert_stops_cleanly(server, build_kernels)
    section = read_setup_section(notebook)
    assert section is not None
    # Stopped, not failed: the next server builds these setup cells again.
    assert build_record(open_store(tmp_path / "store"), section.setup_hash) is None
    assert open_store(tmp_path / "store").list() == []


def test_server_exits_promptly_after_a_failed_kernel_start(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., Server]
) -> None:
    """A kernel start that failed (500) beside a restored kernel and its spare does not keep the server alive."""
    broken = tmp_path / "jupyter" / "kernels" / "broken"
    broken.mkdir(parents=True)
    spec = {
        "argv": [str(tmp_path / "missing" / "python"), "-f", "{connection_file}"],
        "display_name": "Missing interpreter",
        "language": "python",
        "metadata": {"kernel_provisioner": {"provisioner_name": "snapkernel-provisioner"}},
    }
    (broken / "kernel.json").write_text(json.dumps(spec))
    write_notebook(notebooks / "restored.ipynb", SETUP, marked=0)
    build(notebooks / "restored.ipynb", tmp_path / "store")
    server = start_server(SNAPKERNEL_SPARE_KERNELS="1", JUPYTER_PATH=str(tmp_path / "jupyter"))
    assert server.ready_kernel("restored.ipynb")["start"] == "restored"
    server.wait_until(lambda: len(server.processes(RESTORE_HELPER)) == 2, 60, "no spare kernel was restored")
    failed = server.start_session("restored.ipynb", kernel="broken")
    assert failed.status_code == 500, failed.text
    assert "No such file or directory" in failed.json()["message"]
    assert_stops_cleanly(server, server.processes(RESTORE_HELPER))


def test_build_waiting_for_another_process_build_does_not_hold_the_server(
    notebooks: Path, start_server: Callable[..., Server]
) -> None:
    """A server build that waits for a terminal's build of the same cells does not keep the server from exiting."""
    notebook = write_notebook(notebooks / "slow.ipynb", SLEEPING_SETUP, marked=0)
    server = start_server()
    terminal = subprocess.Popen(
        [str(JUPYTER), "snapkernel", "--store", str(server.store), "build", "--quiet", str(notebook)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        terminal_build = psutil.Process(terminal.pid)
        server.wait_until(
            lambda: any("--snapshot-build" in " ".join(child.cmdline()) for child in terminal_build.children()),
            60,
            "the terminal's build did not start its kernel",
        )
        response = server.api("POST", "snapkernel/api/builds", json={"path": "slow.ipynb"})
        assert response.status_code == 202, response.text
        time.sleep(1)
        assert server.processes("--snapshot-build") == []  # it waits for the terminal's build
        assert_stops_cleanly(server, [])
        assert terminal.poll() is None  # the terminal's build is not the server's to stop
    finally:
        os.killpg(terminal.pid, signal.SIGKILL)
        terminal.wait()
