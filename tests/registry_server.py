"""A real OCI registry for tests: Debian's docker-registry (the distribution server) on 127.0.0.1, with htpasswd
users and TLS from a CA made here, its storage in a temporary folder."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from snapkernel_engine.registry.artifact import HARDWARE, KEY
from snapkernel_engine.registry.client import MANIFEST_MEDIA_TYPE

USER, PASSWORD = "course", "s3cret-password"
SERVER = "/usr/bin/docker-registry"


def registry_unavailable() -> str | None:
    """Why no registry can be started here (None: one can)."""
    for tool in (SERVER, "openssl", "htpasswd"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: `make setup` installs docker-registry, openssl and apache2-utils"
    return None


@dataclass(frozen=True)
class Registry:
    """A running registry: where it listens, its CA, its storage, and an auth file holding its user's password."""

    host: str
    ca_file: Path
    storage: Path
    auth_file: Path

    def repository(self, name: str) -> str:
        """A reference to a repository of this registry."""
        return f"{self.host}/{name}"

    def env(self) -> dict[str, str]:
        """What a process needs to use this registry: its credentials and its CA."""
        return {"REGISTRY_AUTH_FILE": str(self.auth_file), "REQUESTS_CA_BUNDLE": str(self.ca_file)}

    def blob_file(self, digest: str) -> Path:
        """Where the registry keeps a blob on its disk."""
        hexdigest = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hexdigest[:2] / hexdigest / "data"

    def _request(self, method: str, path: str, **options: Any) -> requests.Response:
        """One request to the registry's API as its test user."""
        url = f"https://{self.host}/v2/{path}"
        return requests.request(method, url, auth=(USER, PASSWORD), verify=str(self.ca_file), timeout=30, **options)

    def manifest(self, repository: str, tag: str) -> dict[str, Any]:
        """The manifest at a tag."""
        response = self._request("GET", f"{repository}/manifests/{tag}", headers={"Accept": MANIFEST_MEDIA_TYPE})
        response.raise_for_status()
        return dict(response.json())

    def put_manifest(self, repository: str, tag: str, manifest: dict[str, Any]) -> None:
        """Store a manifest the test wrote under a tag."""
        response = self._request(
            "PUT", f"{repository}/manifests/{tag}", headers={"Content-Type": MANIFEST_MEDIA_TYPE},
            data=json.dumps(manifest).encode(),
        )  # fmt: skip
        assert response.status_code == 201, response.text

    def tag_holding(self, repository: str, key: str) -> str:
        """The tag whose artifact holds the snapshot of setup key `key` (found by its annotation, not computed)."""
        tags = self._request("GET", f"{repository}/tags/list").json()["tags"]
        for tag in tags:
            if self.manifest(repository, tag)["annotations"][KEY] == key:
                return str(tag)
        raise AssertionError(f"no tag of {repository} holds the setup key {key}: {tags}")

    def move_to_other_hardware(self, repository: str, key: str) -> None:
        """Rewrite the hardware annotation of the artifact of setup key `key` as that of a CPU this machine lacks."""
        tag = self.tag_holding(repository, key)
        manifest = self.manifest(repository, tag)
        hardware = json.loads(manifest["annotations"][HARDWARE])
        hardware["cpu_model"] = "a CPU this machine does not have"
        manifest["annotations"][HARDWARE] = json.dumps(hardware, sort_keys=True)
        self.put_manifest(repository, tag, manifest)


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quietly(command: list[str | Path]) -> None:
    """Run a command, failing with its output if it fails."""
    subprocess.run([str(part) for part in command], check=True, capture_output=True)


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signs for 127.0.0.1: (ca.pem, server.pem, server.key)."""
    ca_key, ca, key, request, cert = (
        folder / name for name in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem")
    )
    _quietly(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=snapkernel test CA"],
    )  # fmt: skip
    _quietly(
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", "/CN=127.0.0.1"],
    )  # fmt: skip
    extensions = folder / "san.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _quietly(
        ["openssl", "x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", extensions],
    )  # fmt: skip
    return ca, cert, key


def write_auth_file(path: Path, host: str, user: str, password: str) -> Path:
    """A containers-auth.json / docker config.json holding one registry's credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return path


@contextmanager
def running_registry(folder: Path) -> Iterator[Registry]:
    """Start a registry with TLS and htpasswd on a free port of 127.0.0.1; stop it afterwards, whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    ca, cert, key = _make_certificates(folder)
    htpasswd = folder / "htpasswd"
    subprocess.run(["htpasswd", "-Bbc", "-C", "4", htpasswd, USER, PASSWORD], check=True, capture_output=True)
    host = f"127.0.0.1:{_free_port()}"
    storage = folder / "storage"
    config = folder / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: {host}\n  secret: snapkernel-test\n  tls:\n    certificate: {cert}\n    key: {key}\n"
        f"auth:\n  htpasswd:\n    realm: snapkernel-test\n    path: {htpasswd}\n"
    )
    log = open(folder / "registry.log", "wb")  # noqa: SIM115  # closed after the server stops
    server = subprocess.Popen([SERVER, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_serving(f"https://{host}/v2/", ca, server, folder / "registry.log")
        auth_file = write_auth_file(folder / "auth.json", host, USER, PASSWORD)
        yield Registry(host, ca, storage, auth_file)
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_until_serving(url: str, ca: Path, server: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the registry's API root until it answers (401: it asks for credentials), or fail with its log."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"docker-registry exited: {log.read_text()[-2000:]}")
        try:
            if requests.get(url, verify=str(ca), timeout=2).status_code == 401:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    pytest.fail(f"docker-registry did not answer at {url}: {log.read_text()[-2000:]}")


def _serve_for_a_fixture(folder: Path) -> Iterator[Registry]:
    """A running registry kept in `folder`, or the test skipped saying what this machine lacks."""
    missing = registry_unavailable()
    if missing is not None:
        pytest.skip(missing)
    with running_registry(folder) as started:
        yield started


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 with TLS and htpasswd, one per test worker, stopped at the end of its session."""
    yield from _serve_for_a_fixture(tmp_path_factory.mktemp("registry"))


@pytest.fixture
def registry_of_its_own(tmp_path: Path) -> Iterator[Registry]:
    """A registry for one test alone: a blob it damages on the registry's disk is not one that later pushes of
    the same bytes find there (the registry keeps the copy it has) and other tests then pull."""
    yield from _serve_for_a_fixture(tmp_path / "registry")
