"""A real JupyterHub, configured as docs/jupyterhub.md says: system users log in through PAM and
their servers and kernels run as themselves, from the machine-wide install."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import SETUP_CELLS, write_notebook
from tests.users import UnixUser, free_port, kernel_client, value

REPO = Path(__file__).resolve().parents[2]
PROXY = REPO / "build" / "node" / "node_modules" / ".bin" / "configurable-http-proxy"
COURSE_CELLS = [SETUP_CELLS[0], "course = 'week 1'"]


def documented_hub_config() -> str:
    """The jupyterhub_config.py block of docs/jupyterhub.md, as an admin would copy it."""
    text = (REPO / "docs" / "jupyterhub.md").read_text()
    blocks = re.findall(r"```python\n(# jupyterhub_config.py\n.*?)```", text, re.DOTALL)
    assert len(blocks) == 1, "docs/jupyterhub.md has one jupyterhub_config.py block"
    return blocks[0]


@dataclass
class Hub:
    url: str
    course_snapshot: str
    alice: UnixUser
    bob: UnixUser
    password: str


@pytest.fixture
def hub(tmp_path: Path, make_user: Any, system_prefix: Path) -> Iterator[Hub]:
    assert PROXY.exists(), "configurable-http-proxy is missing: `make setup` installs it into build/node"
    alice, bob = make_user(in_group=True), make_user(in_group=False)
    password = secrets.token_hex(8)
    subprocess.run(["chpasswd"], input=f"{alice.name}:{password}\n{bob.name}:{password}\n", text=True, check=True)
    course = Path(tempfile.mkdtemp(prefix="sk-hub-course-", dir="/var/tmp"))
    os.chmod(course, 0o755)
    course_notebook = write_notebook(course / "week1.ipynb", COURSE_CELLS, marked=1)
    os.chmod(course_notebook, 0o644)
    course_root = course / "snapshots"
    jupyter = str(system_prefix / "bin" / "jupyter")
    # No restore points for time, here or in the servers: under load a first cell slower than a second leaves one,
    # and bob's copy.ipynb, whose first cell is the course's, would restore it instead of starting cold.
    built = subprocess.run(
        ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/var/empty", "SNAPKERNEL_RESTORE_POINT_SECONDS=0", jupyter,
         "snapkernel", "--store", str(course_root), "build", "--shared", "--quiet", str(course_notebook)],
        capture_output=True, text=True, timeout=300, check=False, cwd=course,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    course_snapshot = built.stdout.split()[1].rstrip(":")

    port = free_port()
    config = documented_hub_config()
    # Only what a test must change: ports, names, paths, and no background work between requests.
    config = config.replace("http://127.0.0.1:8000", f"http://127.0.0.1:{port}")
    config = config.replace('{"alice", "bob"}', repr({alice.name, bob.name}))
    config = config.replace("/opt/snapkernel/", f"{system_prefix}/").replace("/srv/snapkernel/course", str(course_root))
    config += (
        f"\nc.JupyterHub.hub_bind_url = 'http://127.0.0.1:{free_port()}'"
        f"\nc.ConfigurableHTTPProxy.api_url = 'http://127.0.0.1:{free_port()}'"
        f"\nc.ConfigurableHTTPProxy.command = [{str(PROXY)!r}]"
        f"\nc.JupyterHub.db_url = 'sqlite:///{tmp_path / 'hub.sqlite'}'"
        "\nc.Spawner.environment.update({'SNAPKERNEL_AUTO_BUILD': '0', 'SNAPKERNEL_SPARE_KERNELS': '0',"
        " 'SNAPKERNEL_RESTORE_POINT_SECONDS': '0'})"
        "\nc.Spawner.start_timeout = 120\nc.Spawner.http_timeout = 120\n"
    )
    (tmp_path / "jupyterhub_config.py").write_text(config)
    log = open(tmp_path / "hub.log", "wb")  # noqa: SIM115
    hub_process = subprocess.Popen(
        [str(system_prefix / "bin" / "jupyterhub"), "-f", "jupyterhub_config.py"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PATH": f"{system_prefix / 'bin'}:/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            # The proxy answers 404 until the hub has registered its routes: wait for the hub itself.
            try:
                if requests.get(f"{url}/hub/api", timeout=1).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the hub did not start:\n" + (tmp_path / "hub.log").read_text()[-3000:])
        yield Hub(url, course_snapshot, alice, bob, password)
    finally:
        os.killpg(hub_process.pid, signal.SIGTERM)
        try:
            hub_process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(hub_process.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(course, ignore_errors=True)


class Person:
    """A system user logged in through the hub's login form (PAM), with a token for API calls."""

    def __init__(self, hub: Hub, account: UnixUser, password: str) -> None:
        self.hub, self.account, self.name = hub, account, account.name
        self.browser = requests.Session()
        self.browser.get(f"{hub.url}/hub/login")
        xsrf = self.browser.cookies.get("_xsrf", path="/hub/")
        response = self.browser.post(
            f"{hub.url}/hub/login", data={"username": self.name, "password": password, "_xsrf": xsrf}
        )
        assert response.ok and "jupyterhub-session-id" in self.browser.cookies, "logged in through PAM"
        self.browser.get(f"{hub.url}/hub/home")  # the xsrf token is bound to the logged-in session
        xsrf = self.browser.cookies.get("_xsrf", path="/hub/")
        token = self.browser.post(
            f"{hub.url}/hub/api/users/{self.name}/tokens", json={"note": "test"}, headers={"X-XSRFToken": xsrf}
        )
        assert token.status_code == 201, token.text
        self.api = requests.Session()
        self.api.headers["Authorization"] = f"token {token.json()['token']}"

    def start_server(self) -> None:
        response = self.api.post(f"{self.hub.url}/hub/api/users/{self.name}/server")
        # The login's redirect to the user's URL may have started the server already.
        started_by_login = response.status_code == 400 and "already running" in response.text
        assert response.status_code in {201, 202} or started_by_login, response.text
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
            if build["state"] not in ("queued", "building"):
                assert build["state"] == "ready", build
                return build["snapshot"]
            time.sleep(0.1)
        raise AssertionError("the build did not finish")

    def start_kernel(self, notebook: str) -> dict[str, Any]:
        body = {"path": notebook, "name": notebook, "type": "notebook", "kernel": {"name": "snapkernel"}}
        session = self.server("POST", "api/sessions", json=body)
        assert session.status_code == 201, session.text
        kernel_id = session.json()["kernel"]["id"]
        return {**self.server("GET", f"snapkernel/api/kernels/{kernel_id}").json(), "kernel_id": kernel_id}

    def kernel_facts(self, kernel_id: str, expression: str) -> Any:
        """Evaluate an expression in one of this person's kernels (connecting as root through its connection file)."""
        with kernel_client(self.account, kernel_id) as client:
            return value(client, expression)


def test_each_user_restores_their_own_and_the_course_snapshot_as_themselves(hub: Hub) -> None:
    alice_account, bob_account = hub.alice, hub.bob
    for index, account in enumerate((alice_account, bob_account)):
        account.write_notebook("analysis.ipynb", [SETUP_CELLS[0], f"owner = {account.name!r}\nvalue = {index}"], 1)
        account.write_notebook("week1.ipynb", COURSE_CELLS, marked=1)
    # The same setup cells as alice's notebook, in bob's home: bob still may not use alice's snapshot.
    bob_account.write_notebook("copy.ipynb", [SETUP_CELLS[0], f"owner = {alice_account.name!r}\nvalue = 0"], 1)

    alice, bob = Person(hub, alice_account, hub.password), Person(hub, bob_account, hub.password)
    alice.start_server()
    bob.start_server()
    alice_snapshot, bob_snapshot = alice.build("analysis.ipynb"), bob.build("analysis.ipynb")
    alice_store = alice_account.store / "snapshots"
    assert (alice_store / alice_snapshot).is_dir() and (bob_account.store / "snapshots" / bob_snapshot).is_dir()
    assert alice_account.store.stat().st_mode & 0o777 == 0o700

    for person, snapshot, account in ((alice, alice_snapshot, alice_account), (bob, bob_snapshot, bob_account)):
        start = person.start_kernel("analysis.ipynb")
        assert (start["start"], start["snapshot"]) == ("restored", snapshot), start
        assert person.kernel_facts(start["kernel_id"], "[os.getuid(), owner]") == [account.uid, account.name]
        course = person.start_kernel("week1.ipynb")
        assert (course["start"], course["snapshot"]) == ("restored", hub.course_snapshot), course
        facts = person.kernel_facts(course["kernel_id"], "[os.getuid(), os.getcwd(), course]")
        assert facts == [account.uid, str(account.home), "week 1"]

    # Through the API: bob's server knows only bob's store.
    listed = [entry["id"] for entry in bob.server("GET", "snapkernel/api/snapshots").json()["snapshots"]]
    assert listed == [bob_snapshot]
    assert bob.server("GET", "snapkernel/api/snapshots", user=alice.name).status_code in {403, 404}
    assert bob.server("DELETE", f"snapkernel/api/snapshots/{alice_snapshot}").status_code == 404
    for path in (f"../{alice.name}/analysis.ipynb", str(alice_account.home / "analysis.ipynb")):
        assert bob.server("GET", "snapkernel/api/status", params={"path": path}).status_code in {400, 403, 404}
    copy = bob.start_kernel("copy.ipynb")
    assert (copy["start"], copy["reason"]) == ("cold", "no snapshot yet"), copy

    # Through the filesystem, as bob: the operating system refuses every way in.
    for command in (
        ["ls", str(alice_store)],
        ["cat", str(alice_store / alice_snapshot / "manifest.json")],
        ["rm", "-rf", str(alice_store / alice_snapshot)],
    ):
        attempt = bob_account.run(*command)
        assert attempt.returncode != 0 and "Permission denied" in attempt.stderr, (command, attempt.stderr)
    listing = bob_account.jupyter("--store", str(alice_account.store), "list", "--json")
    assert listing.returncode != 0 or json.loads(listing.stdout) == [], listing.stdout
    assert (alice_store / alice_snapshot / "manifest.json").is_file(), "alice's snapshot is still there"
