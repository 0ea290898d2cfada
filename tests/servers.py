"""A real `jupyter server` subprocess of this user, with the snapkernel extension: for tests and `make bench`."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests
from jupyter_client import BlockingKernelClient

from jupyter_snapkernel.kernel.process_title import BUILD_TITLE

JUPYTER = Path(sys.executable).with_name("jupyter")
# A build kernel's command line before it names itself (`snapkernel build of NB`), and after.
BUILD_KERNEL = ("--snapshot-build", BUILD_TITLE)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalServer:
    """A `jupyter server` subprocess (token auth) on FOLDER/notebooks, reached over HTTP.

    Its store is FOLDER/store unless `env` names another (SNAPKERNEL_STORE); automatic builds and
    spare kernels are off unless `env` turns them on.
    """

    def __init__(self, folder: Path, env: dict[str, str] | None = None) -> None:
        """Start the server and wait until it answers."""
        env = env or {}
        self.root = folder / "notebooks"
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = Path(env.get("SNAPKERNEL_STORE", folder / "store"))
        self.runtime = folder / "runtime"
        self.log_path = folder / "server.log"
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
        try:
            self.wait_until(self.answers, 60, "the server did not start")
        except RuntimeError:
            self.kill()
            raise

    def answers(self) -> bool:
        """Whether the server answers its status URL."""
        try:
            return self.http.get(f"{self.url}/api/status", timeout=1).ok
        except requests.RequestException:
            return False

    def log(self) -> str:
        """The server's output so far."""
        return self.log_path.read_text(errors="replace")

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll `condition` until it holds; raise RuntimeError with `what` and the server's log otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited:\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}:\n{self.log()[-4000:]}")
            time.sleep(0.1)

    def api(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """An HTTP request to the server (120 s unless `timeout` says otherwise)."""
        kwargs.setdefault("timeout", 120)
        return self.http.request(method, f"{self.url}/{path}", **kwargs)

    def start_session(self, notebook: str, kernel: str = "snapkernel") -> requests.Response:
        """Ask for a new notebook session (a kernel of its own) through the sessions API."""
        body = {"path": f"{notebook}-{secrets.token_hex(4)}", "name": notebook, "type": "notebook"}
        return self.api("POST", "api/sessions", json={**body, "kernel": {"name": kernel}})

    def client(self, kernel_id: str) -> BlockingKernelClient:
        """A client on one of the server's kernels, through its connection file (channels not started)."""
        client = BlockingKernelClient()
        client.load_connection_file(str(self.runtime / f"kernel-{kernel_id}.json"))
        return client

    def ready_kernel(self, notebook: str) -> dict[str, Any]:
        """Start a session on a notebook, wait until its kernel answers; return how it started."""
        response = self.start_session(notebook)
        assert response.status_code == 201, response.text + self.log()[-4000:]
        kernel_id = response.json()["kernel"]["id"]
        client = self.client(kernel_id)
        # One heartbeat missed for 1 s (the default) reads as a dead kernel: on a busy machine (a build
        # checkpointing next to it) a kernel that is starting can miss one.
        client.hb_channel.time_to_dead = 10.0
        client.start_channels()
        try:
            client.wait_for_ready(timeout=60)
        finally:
            client.stop_channels()
        return self.api("GET", f"snapkernel/api/kernels/{kernel_id}").json()

    def processes(self, *markers: str, other_than: str | None = None) -> list[psutil.Process]:
        """The server's descendants whose command line holds one of `markers` (and whose name is not `other_than`);
        those that end while they are looked at are left out."""
        found = []
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                if any(marker in " ".join(child.cmdline()) for marker in markers) and child.name() != other_than:
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
        """Kill whatever is left of the server's process group."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
