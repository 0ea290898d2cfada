"""Fixtures: real Unix users (created with useradd, removed after each test) running snapkernel from a
machine-wide install (`make system-install`)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from filelock import FileLock
from jupyter_client import BlockingKernelClient

from tests.helpers import write_notebook
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]
# A prefix of its own, so the tests never touch an admin's /opt/snapkernel.
PREFIX = Path(os.environ.get("SNAPKERNEL_TEST_PREFIX", "/opt/snapkernel-test"))
GROUP = "snapkernel"


@pytest.fixture(scope="session")
def system_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run `make system-install` into the test prefix once per test run, whichever test worker needs it first."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the tests create Unix users and run `make system-install`")
    # Test workers (pytest-xdist) share the run's base temporary folder: one installs, the others wait for it.
    shared = tmp_path_factory.getbasetemp().parent if os.environ.get("PYTEST_XDIST_WORKER") else None
    done = (shared or tmp_path_factory.getbasetemp()) / "system-install.done"
    with FileLock(str(done) + ".lock"):
        if not done.exists():
            result = subprocess.run(
                ["make", "-s", "system-install", f"PREFIX={PREFIX}"],
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
            done.touch()
    return PREFIX


@dataclass
class UnixUser:
    """An ordinary account made for one test."""

    name: str
    prefix: Path

    @property
    def uid(self) -> int:
        return pwd.getpwnam(self.name).pw_uid

    @property
    def gid(self) -> int:
        return pwd.getpwnam(self.name).pw_gid

    @property
    def home(self) -> Path:
        return Path(pwd.getpwnam(self.name).pw_dir)

    @property
    def store(self) -> Path:
        return self.home / ".local" / "share" / "jupyter" / "snapkernel"

    def environment(self, extra: dict[str, str] | None = None) -> list[str]:
        """`env -i` arguments: a login-like environment with nothing of root's."""
        env = {
            "HOME": str(self.home),
            "USER": self.name,
            "LOGNAME": self.name,
            "PATH": f"{self.prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **(extra or {}),
        }
        return ["env", "-i", *(f"{key}={value}" for key, value in env.items())]

    def command(self, args: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """A command line that runs `args` as this user."""
        return ["runuser", "-u", self.name, "--", *self.environment(env), *args]

    def run(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as this user and wait for it."""
        return subprocess.run(
            self.command(args, env), cwd=cwd or self.home, capture_output=True, text=True, timeout=timeout, check=False
        )

    def jupyter(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
        """Run `jupyter snapkernel ARGS` from the machine-wide install as this user."""
        return self.run(str(self.prefix / "bin" / "jupyter"), "snapkernel", *args, env=env, cwd=cwd)

    def write_notebook(self, relative: str, cells: list[str], marked: int, after: list[str] | None = None) -> Path:
        """Write a notebook into the user's home, owned by the user."""
        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_notebook(path, cells, marked, after)
        for owned in (path, *path.relative_to(self.home).parents):
            os.chown(self.home / owned, self.uid, self.gid)
        return path

    def manifests(self) -> list[dict[str, Any]]:
        """The manifests in the user's store (read as root)."""
        found = sorted((self.store / "snapshots").glob("*/manifest.json"), key=lambda path: path.stat().st_mtime)
        return [json.loads(path.read_text()) for path in found]


def _remove_user(name: str) -> None:
    """Kill every process of the user, then delete the account and its home."""
    for _ in range(50):
        if subprocess.run(["pkill", "-KILL", "-u", name], check=False).returncode == 1:
            break  # nothing left to kill
        time.sleep(0.1)
    subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)


@pytest.fixture
def make_user(system_prefix: Path) -> Iterator[Any]:
    """Create Unix users with useradd; each is removed after the test, whatever happened."""
    created: list[str] = []

    def make(in_group: bool = False) -> UnixUser:
        name = f"sk{secrets.token_hex(4)}"
        groups = ["--groups", GROUP] if in_group else []
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", *groups, name], check=True)
        created.append(name)
        return UnixUser(name, system_prefix)

    try:
        yield make
    finally:
        for name in created:
            _remove_user(name)


class UserServer:
    """A jupyter server running as a user, reached over HTTP with a token."""

    def __init__(self, user: UnixUser, root_dir: Path, env: dict[str, str] | None = None) -> None:
        self.user = user
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = user.home / f"server-{self.port}.log"
        args = [
            str(user.prefix / "bin" / "jupyter"), "server", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}", f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root_dir}",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                user.command(args, env), cwd=root_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        for _ in range(600):
            try:
                if self.http.get(f"{self.url}/api/status", timeout=1).ok:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"the server of {user.name} did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"{self.url}/{path}", timeout=300, **kwargs)

    def start_session(self, notebook: str) -> dict[str, Any]:
        """Open a new session (a kernel of its own) on a notebook; return how its kernel started, with its id."""
        # Sessions are keyed by path: a path of its own per session, like JupyterLab's consoles of a notebook.
        path = f"{notebook}-{secrets.token_hex(4)}"
        body = {"path": path, "name": notebook, "type": "notebook", "kernel": {"name": "snapkernel"}}
        response = self.request("POST", "api/sessions", json=body)
        assert response.status_code == 201, response.text + self.log()
        kernel_id = response.json()["kernel"]["id"]
        start = self.request("GET", f"snapkernel/api/kernels/{kernel_id}").json()
        return {**start, "kernel_id": kernel_id}

    def client(self, kernel_id: str) -> AbstractContextManager[BlockingKernelClient]:
        """A client on one of the server's kernels (see `kernel_client`)."""
        return kernel_client(self.user, kernel_id)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextmanager
def kernel_client(user: UnixUser, kernel_id: str) -> Iterator[BlockingKernelClient]:
    """A client on a kernel of the user's server, through its connection file (read as root); closed after."""
    client = BlockingKernelClient()
    client.load_connection_file(
        str(user.home / ".local" / "share" / "jupyter" / "runtime" / f"kernel-{kernel_id}.json")
    )
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        client.stop_channels()


def execute(client: BlockingKernelClient, code: str, timeout: float = 120) -> tuple[str, dict[str, Any]]:
    """Run code in a kernel; return its stdout and the reply's content."""
    chunks: list[str] = []

    def hook(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            chunks.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            chunks.append("\n".join(message["content"]["traceback"]))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    return "".join(chunks), reply["content"]


def value(client: BlockingKernelClient, expression: str) -> Any:
    """Evaluate a JSON-serialisable expression in a kernel."""
    stdout, reply = execute(client, f"import json as _json; print(_json.dumps({expression}))")
    assert reply["status"] == "ok", stdout
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture
def user_server() -> Iterator[Any]:
    """Start jupyter servers as users; each is stopped after the test."""
    servers: list[UserServer] = []

    def start(user: UnixUser, root_dir: Path, env: dict[str, str] | None = None) -> UserServer:
        server = UserServer(user, root_dir, env)
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
