"""SIGTERM stops a real jupyter server within 10 s in every state, and no process it started outlives it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from jupyter_snapkernel.notebook.setup_section import read_setup_section
from jupyter_snapkernel.notebook.state import build_record
from jupyter_snapkernel.paths import open_store
from tests.helpers import PRINTING_SETUP, build, write_notebook
from tests.servers import BUILD_KERNEL, JUPYTER, LocalServer

EXIT_LIMIT_S = 10.0
SLEEPING_SETUP = ["import time\ntime.sleep(60)"]
RESTORE_HELPER = (
    "snapkernel_engine.restore_init"  # the init of a restored tree's PID namespace: one per restored kernel
)


@pytest.fixture
def notebooks(tmp_path: Path) -> Path:
    """The servers' root directory."""
    root = tmp_path / "notebooks"
    root.mkdir()
    return root


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., LocalServer]]:
    """Start snapkernel jupyter servers in the test's directory; whatever a test leaves is killed after it."""
    servers: list[LocalServer] = []

    def start(**env: str) -> LocalServer:
        server = LocalServer(tmp_path, env)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()


def assert_stops_cleanly(server: LocalServer, expected: list[psutil.Process]) -> None:
    """SIGTERM stops the server within the limit, and every process it started is gone, none a zombie."""
    assert all(process.is_running() for process in expected)
    exited, alive = server.terminate()
    log = server.log()
    assert exited < EXIT_LIMIT_S, f"the server took {exited:.1f} s to exit:\n{log[-4000:]}"
    assert alive == [], f"{[(process.pid, process.cmdline()) for process in alive]} outlived the server"
    assert "Kernel does not exist" not in log, log[-4000:]


def test_idle_server_exits_promptly_on_sigterm(start_server: Callable[..., LocalServer]) -> None:
    """A server that never started a kernel exits at once."""
    server = start_server()
    assert_stops_cleanly(server, [])


def test_restored_kernel_and_its_spare_are_stopped_with_the_server(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., LocalServer]
) -> None:
    """A restored kernel and the spare restored after it both end with the server, which exits promptly."""
    write_notebook(notebooks / "restored.ipynb", PRINTING_SETUP, marked=0)
    build(notebooks / "restored.ipynb", tmp_path / "store")
    server = start_server(SNAPKERNEL_SPARE_KERNELS="1")
    assert server.ready_kernel("restored.ipynb")["start"] == "restored"
    server.wait_until(lambda: len(server.processes(RESTORE_HELPER)) == 2, 60, "no spare kernel was restored")
    assert_stops_cleanly(server, server.processes(RESTORE_HELPER))


def test_cold_kernel_is_stopped_with_the_server(notebooks: Path, start_server: Callable[..., LocalServer]) -> None:
    """A kernel that started cold (no snapshot yet) ends with the server, which exits promptly."""
    write_notebook(notebooks / "cold.ipynb", PRINTING_SETUP, marked=0)
    server = start_server()
    assert server.ready_kernel("cold.ipynb")["start"] == "cold"
    assert_stops_cleanly(server, server.processes("jupyter_snapkernel.kernel.app"))


@pytest.mark.parametrize("started_by", ["cold-start", "rest-api"])
def test_build_running_its_setup_cell_is_stopped_and_can_run_again(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., LocalServer], started_by: str
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
    build_kernels = server.processes(*BUILD_KERNEL)
    assert len(build_kernels) == 1
    assert_stops_cleanly(server, build_kernels)
    section = read_setup_section(notebook)
    assert section is not None
    # Stopped, not failed: the next server builds these setup cells again.
    assert build_record(open_store(tmp_path / "store"), section.setup_hash) is None
    assert open_store(tmp_path / "store").list() == []


def test_server_exits_promptly_after_a_failed_kernel_start(
    tmp_path: Path, notebooks: Path, start_server: Callable[..., LocalServer]
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
    write_notebook(notebooks / "restored.ipynb", PRINTING_SETUP, marked=0)
    build(notebooks / "restored.ipynb", tmp_path / "store")
    server = start_server(SNAPKERNEL_SPARE_KERNELS="1", JUPYTER_PATH=str(tmp_path / "jupyter"))
    assert server.ready_kernel("restored.ipynb")["start"] == "restored"
    server.wait_until(lambda: len(server.processes(RESTORE_HELPER)) == 2, 60, "no spare kernel was restored")
    failed = server.start_session("restored.ipynb", kernel="broken")
    assert failed.status_code == 500, failed.text
    assert "No such file or directory" in failed.json()["message"]
    assert_stops_cleanly(server, server.processes(RESTORE_HELPER))


def test_build_waiting_for_another_process_build_does_not_hold_the_server(
    notebooks: Path, start_server: Callable[..., LocalServer]
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
            lambda: any(
                marker in " ".join(child.cmdline()) for child in terminal_build.children() for marker in BUILD_KERNEL
            ),
            60,
            "the terminal's build did not start its kernel",
        )
        response = server.api("POST", "snapkernel/api/builds", json={"path": "slow.ipynb"})
        assert response.status_code == 202, response.text
        build_url = f"snapkernel/api/builds/{response.json()['id']}"
        server.wait_until(
            lambda: any(
                "waiting for the build already running" in line for line in server.api("GET", build_url).json()["log"]
            ),
            60,
            "the server's build did not start waiting for the terminal's build",
        )
        assert server.processes(*BUILD_KERNEL) == []  # it waits for the terminal's build
        assert_stops_cleanly(server, [])
        assert terminal.poll() is None  # the terminal's build is not the server's to stop
    finally:
        os.killpg(terminal.pid, signal.SIGKILL)
        terminal.wait()
