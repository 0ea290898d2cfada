"""A real JupyterHub on localhost, configured as docs/jupyterhub.md says, with two users."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.kernel.conftest import SETUP_CELLS, write_notebook

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "build" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
PASSWORD = "change-me"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def documented_hub_config() -> str:
    """The jupyterhub_config.py block of docs/jupyterhub.md, as an admin would copy it."""
    text = (REPO / "docs" / "jupyterhub.md").read_text()
    blocks = re.findall(r"```python\n(# jupyterhub_config.py\n.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/jupyterhub.md has one jupyterhub_config.py block"
    return blocks[0]


@dataclass
class Hub:
    url: str
    home: Path
    snapshots: Path


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    assert PROXY.exists(), "configurable-http-proxy is missing: `make setup` installs it into build/node"
    home, snapshots = tmp_path / "home", tmp_path / "snapshots"
    port = free_port()
    config = documented_hub_config()
    # Only what a test must change: ports, paths, and no background work between requests.
    config = config.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    config = config.replace("/srv/jupyter/home", str(home)).replace("/srv/jupyter/snapshots", str(snapshots))
    config += (
        f"\nc.JupyterHub.hub_bind_url = 'http://127.0.0.1:{free_port()}'"
        f"\nc.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{free_port()}'"
        f"\nc.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]"
        f"\nc.JupyterHub.db_url = 'sqlite:///{tmp_path / 'hub.sqlite'}'"
        "\nc.Spawner.environment.update({'SNAPKERNEL_AUTO_BUILD': '0', 'SNAPKERNEL_SPARE_KERNELS': '0'})"
        "\nc.Spawner.start_timeout = 120\nc.Spawner.http_timeout = 120\n"
    )
    (tmp_path / "jupyterhub_config.py").write_text(config)
    log = open(tmp_path / "hub.log", "wb")  # noqa: SIM115
    hub_process = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyterhub")), "-f", "jupyterhub_config.py"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if requests.get(f"{url}/hub/api", timeout=1).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        else:
            raise AssertionError("the hub did not start:\n" + (tmp_path / "hub.log").read_text()[-3000:])
        yield Hub(url, home, snapshots)
    finally:
        os.killpg(hub_process.pid, signal.SIGTERM)
        try:
            hub_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(hub_process.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-f", f"jupyterhub-singleuser.*{port}"], check=False)
        log.close()


class User:
    """A person logged in through the hub's login form, with a token for API calls."""

    def __init__(self, hub: Hub, name: str) -> None:
        self.hub, self.name = hub, name
        self.browser = requests.Session()
        self.browser.get(f"{hub.url}/hub/login")
        xsrf = self.browser.cookies.get("_xsrf", path="/hub/")
        response = self.browser.post(
            f"{hub.url}/hub/login", data={"username": name, "password": PASSWORD, "_xsrf": xsrf}
        )
        assert response.ok and "jupyterhub-session-id" in self.browser.cookies, "logged in"
        self.browser.get(f"{hub.url}/hub/home")  # the xsrf token is bound to the logged-in session
        xsrf = self.browser.cookies.get("_xsrf", path="/hub/")
        token = self.browser.post(
            f"{hub.url}/hub/api/users/{name}/tokens", json={"note": "test"}, headers={"X-XSRFToken": xsrf}
        )
        assert token.status_code == 201, token.text
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {token.json()['token']}"

    def start_server(self) -> None:
        response = self.api.post(f"{self.hub.url}/hub/api/users/{self.name}/server")
        assert response.status_code in {201, 202}, response.text
        for _ in range(1200):
            server = self.api.get(f"{self.hub.url}/hub/api/users/{self.name}").json()["servers"].get("", {})
            if server.get("ready"):
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name}'s server did not start")

    def server(self, method: str, path: str, user: str | None = None, **kwargs: Any) -> requests.Response:
        return self.api.request(method, f"{self.hub.url}/user/{user or self.name}/{path}", **kwargs)

    def build(self, notebook: str) -> str:
        build = self.server("POST", "snapkernel/api/builds", json={"path": notebook}).json()
        for _ in range(1200):
            build = self.server("GET", f"snapkernel/api/builds/{build['id']}").json()
            if build["state"] != "building":
                assert build["state"] == "ready", build
                return build["snapshot"]
            time.sleep(0.1)
        raise AssertionError("the build did not finish")

    def start_kernel(self, notebook: str) -> dict[str, Any]:
        body = {"path": notebook, "name": notebook, "type": "notebook", "kernel": {"name": "snapkernel"}}
        session = self.server("POST", "api/sessions", json=body)
        assert session.status_code == 201, session.text
        kernel_id = session.json()["kernel"]["id"]
        return self.server("GET", f"snapkernel/api/kernels/{kernel_id}").json()


def test_each_user_restores_from_their_own_snapshots(hub: Hub) -> None:
    for name, value in (("alice", 1), ("bob", 2)):
        (hub.home / name).mkdir(parents=True)
        cells = [SETUP_CELLS[0], f"owner = {name!r}\nvalue = {value}"]
        write_notebook(hub.home / name / "analysis.ipynb", cells, marked=1)
    # The same setup cells as alice's notebook, in bob's home: bob still may not use alice's snapshot.
    write_notebook(hub.home / "bob" / "copy.ipynb", [SETUP_CELLS[0], "owner = 'alice'\nvalue = 1"], marked=1)

    alice, bob = User(hub, "alice"), User(hub, "bob")
    alice.start_server()
    bob.start_server()
    alice_snapshot, bob_snapshot = alice.build("analysis.ipynb"), bob.build("analysis.ipynb")
    assert (hub.snapshots / "alice" / "snapshots" / alice_snapshot).is_dir()
    assert (hub.snapshots / "bob" / "snapshots" / bob_snapshot).is_dir()

    for user, snapshot in ((alice, alice_snapshot), (bob, bob_snapshot)):
        start = user.start_kernel("analysis.ipynb")
        assert start["start"] == "restored", start
        assert start["snapshot"] == snapshot

    listed = [entry["id"] for entry in bob.server("GET", "snapkernel/api/snapshots").json()["snapshots"]]
    assert listed == [bob_snapshot]
    assert bob.server("GET", "snapkernel/api/snapshots", user="alice").status_code in {403, 404}
    assert bob.server("DELETE", f"snapkernel/api/snapshots/{alice_snapshot}").status_code == 404
    assert (hub.snapshots / "alice" / "snapshots" / alice_snapshot).is_dir()

    copy = bob.start_kernel("copy.ipynb")
    assert copy["start"] == "cold"
    assert copy["reason"] == "no snapshot yet"
