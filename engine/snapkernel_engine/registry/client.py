"""Talking to one OCI registry with oras-py's auth backends: credentials from the usual files, TLS unless on
loopback, one attempt per request with a timeout, and errors in one line that name the registry."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SnapshotError

if TYPE_CHECKING:
    import requests

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
DEFAULT_TIMEOUT_S = 30.0
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
READ_BYTES = 2**20


class RegistryError(SnapshotError):
    """A registry could not be reached, refused us, or sent what we did not ask for."""


@dataclass(frozen=True)
class Reference:
    """A repository in a registry, with a tag or a digest or neither: `HOST[:PORT]/PATH[:TAG|@DIGEST]`."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None
    plain_http: bool = False  # only ever for a registry on the loopback address

    @classmethod
    def parse(cls, text: str, plain_http: bool = False) -> Reference:
        """Read a reference; refuse one without a registry host, and plain HTTP to anything but loopback."""
        if text.startswith("http://"):
            text, plain_http = text.removeprefix("http://"), True
        host, _, rest = text.partition("/")
        if not rest or not ("." in host or ":" in host or host == "localhost"):
            raise RegistryError(f"{text!r} names no registry: write HOST[:PORT]/REPOSITORY[:TAG]")
        rest, _, digest = rest.partition("@")
        repository, _, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
        if digest and not DIGEST.fullmatch(digest):
            raise RegistryError(f"{text!r}: {digest!r} is not a sha256 digest")
        if tag and not TAG.fullmatch(tag):
            raise RegistryError(f"{text!r}: {tag!r} is not a valid tag")
        if not re.fullmatch(r"[a-z0-9]+([._/-][a-z0-9]+)*", repository):
            raise RegistryError(f"{text!r}: {repository!r} is not a valid repository name (lower case, digits, ./_-)")
        if plain_http and not is_loopback(host):
            raise RegistryError(f"plain HTTP is only for a registry on the loopback address, not {host}: use TLS")
        return cls(host, repository, tag or None, digest or None, plain_http)

    @property
    def repository_url(self) -> str:
        """Where the repository's API is: `scheme://host/v2/repository`."""
        return f"{'http' if self.plain_http else 'https'}://{self.registry}/v2/{self.repository}"

    def at(self, tag: str | None = None, digest: str | None = None) -> Reference:
        """The same repository with another tag or digest."""
        return replace(self, tag=tag, digest=digest)

    def __str__(self) -> str:
        scheme = "http://" if self.plain_http else ""
        suffix = f"@{self.digest}" if self.digest else f":{self.tag}" if self.tag else ""
        return f"{scheme}{self.registry}/{self.repository}{suffix}"


def is_loopback(host: str) -> bool:
    """Whether a registry host (with or without its port) is on the loopback address."""
    bracketed = host.startswith("[")  # [IPv6]:PORT
    name = host[1 : host.find("]")] if bracketed else host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def auth_files() -> list[str]:
    """The credential files, in the order podman and docker read them: REGISTRY_AUTH_FILE, podman's, docker's."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    docker = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    candidates = [
        os.environ.get("REGISTRY_AUTH_FILE"),
        f"{runtime}/containers/auth.json" if runtime else None,
        str(docker),
    ]
    return [path for path in candidates if path and os.path.isfile(path)]


class RegistryClient:
    """One repository of a registry: a session, and oras-py's auth backend (basic or token, as the registry asks)
    with the credentials oras-py reads from the docker/podman files."""

    def __init__(self, reference: Reference, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        # Imported here, and not oras.provider: that loads jsonschema, 2 s here, for validation this does itself.
        import oras.container
        import requests

        self.reference = reference
        self.timeout = timeout
        self.container = oras.container.Container(reference.repository, registry=reference.registry)
        self.session = requests.Session()
        self.auth: Any = None  # oras-py's auth backend, once the registry asked for credentials
        self._authenticated = False

    def fail(self, what: str) -> RegistryError:
        """A RegistryError that names the registry."""
        return RegistryError(f"registry {self.reference.registry}: {what}")

    def _login(self, challenge: str) -> None:
        """Choose the auth backend the registry's challenge asks for and load this user's credentials for it."""
        import oras.auth

        backend = "basic" if challenge.lower().startswith("basic") else "token"
        self.auth = oras.auth.get_auth_backend(backend, self.session, self.reference.plain_http, tls_verify=True)
        self.auth.load_configs(self.container, configs=auth_files())
        if backend == "basic" and not getattr(self.auth, "_basic_auth", None):
            raise self.fail(
                "asks for credentials, and none are stored for it in REGISTRY_AUTH_FILE, "
                "$XDG_RUNTIME_DIR/containers/auth.json or ~/.docker/config.json (`podman login` writes them)"
            )
        self._authenticated = True

    def request(self, method: str, url: str, **options: Any) -> requests.Response:
        """One request with this user's credentials, logging in when the registry asks; no retries, a timeout."""
        import requests

        headers = dict(options.pop("headers", {}))
        if self._authenticated:
            headers.update(self.auth.get_auth_header())
        try:
            response = self.session.request(method, url, headers=headers, timeout=self.timeout, **options)
            if response.status_code == 401 and not self._authenticated:
                self._login(response.headers.get("Www-Authenticate", ""))
                retried, changed = self.auth.authenticate_request(response, headers)
                if not changed:
                    raise self.fail("refused the credentials stored for it (401 Unauthorized)")
                response = self.session.request(method, url, headers=retried, timeout=self.timeout, **options)
        except requests.exceptions.SSLError as error:
            raise self.fail(f"TLS failed ({_first_line(error)}); trust its CA through REQUESTS_CA_BUNDLE") from None
        except requests.exceptions.RequestException as error:
            raise self.fail(f"cannot be reached ({_first_line(error)})") from None
        if response.status_code == 401:
            raise self.fail("refused the credentials stored for it (401 Unauthorized): log in again")
        if response.status_code == 403:
            raise self.fail(f"denies access to {self.reference.repository} (403 Forbidden)")
        return response

    def manifest(self, reference: str) -> tuple[dict[str, Any], str] | None:
        """The manifest at a tag or digest and its digest, checked against the bytes sent (None: there is none)."""
        response = self.request(
            "GET", f"{self.reference.repository_url}/manifests/{reference}", headers={"Accept": MANIFEST_MEDIA_TYPE}
        )
        if response.status_code == 404:
            return None
        self._expect(response, f"manifest {reference}")
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if DIGEST.fullmatch(reference) and digest != reference:
            raise self.fail(f"sent a manifest whose digest is {digest}, not the {reference} asked for")
        try:
            manifest = json.loads(response.content)
        except ValueError:
            raise self.fail(f"manifest {reference} is not JSON") from None
        if not isinstance(manifest, dict):
            raise self.fail(f"manifest {reference} is not a JSON object")
        return manifest, digest

    def put_manifest(self, manifest: bytes, tag: str) -> str:
        """Store a manifest under a tag; return its digest."""
        url = f"{self.reference.repository_url}/manifests/{tag}"
        response = self.request("PUT", url, data=manifest, headers={"Content-Type": MANIFEST_MEDIA_TYPE})
        self._expect(response, f"storing manifest {tag}")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def has_blob(self, digest: str) -> bool:
        """Whether the repository holds a blob already."""
        response = self.request("HEAD", f"{self.reference.repository_url}/blobs/{digest}")
        return response.status_code == 200

    def put_blob(self, data: bytes | memoryview, digest: str) -> None:
        """Upload one blob in a single request (POST for a session, then PUT with its digest)."""
        started = self.request("POST", f"{self.reference.repository_url}/blobs/uploads/")
        self._expect(started, "starting an upload")
        location = started.headers.get("Location", "")
        if location.startswith("/"):
            location = f"{'http' if self.reference.plain_http else 'https'}://{self.reference.registry}{location}"
        separator = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
        response = self.request("PUT", f"{location}{separator}digest={digest}", data=bytes(data), headers=headers)
        self._expect(response, f"uploading blob {digest[:19]}")

    def blob(self, digest: str) -> Iterator[bytes]:
        """A blob's bytes, as they arrive (the caller checks their digest)."""
        import requests

        response = self.request("GET", f"{self.reference.repository_url}/blobs/{digest}", stream=True)
        with response:
            self._expect(response, f"blob {digest[:19]}")
            try:
                yield from response.iter_content(READ_BYTES)
            except requests.exceptions.RequestException as error:
                raise self.fail(f"blob {digest[:19]} broke off ({_first_line(error)})") from None

    def _expect(self, response: requests.Response, what: str) -> None:
        """Raise a one-line error unless the registry answered with success."""
        if response.status_code < 300:
            return
        try:
            errors = response.json().get("errors") or []
            detail = "; ".join(str(error.get("message", error.get("code"))) for error in errors)
        except (ValueError, AttributeError):
            detail = ""
        raise self.fail(f"{what}: HTTP {response.status_code} {response.reason}" + (f" ({detail})" if detail else ""))


def _first_line(error: BaseException) -> str:
    """The first line of an exception's text, without urllib3's object reprs."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"<[^>]*>", "", text)[:200]
