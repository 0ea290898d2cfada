"""Registry references, content-defined chunks and pulled manifests: what is accepted and what is refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapkernel_engine.errors import VerificationError
from snapkernel_engine.manifest import FileRecord, Manifest
from snapkernel_engine.registry.artifact import (
    ARTIFACT_TYPE,
    CHUNK_LAYER,
    MANIFEST_LAYER,
    TITLE,
    Layer,
    SnapshotArtifact,
    snapshot_tag,
)
from snapkernel_engine.registry.chunks import MAX_PAGES, PAGE, chunk_file
from snapkernel_engine.registry.client import Reference, RegistryError, is_loopback
from snapkernel_engine.registry.transfer import _check_tiling

DIGEST = "sha256:" + "ab" * 32


def test_a_reference_names_its_registry_repository_and_tag() -> None:
    """HOST:PORT/PATH:TAG and @DIGEST parse; TLS unless asked otherwise."""
    reference = Reference.parse("registry.example.org:5000/course/snaps:v1")
    assert (reference.registry, reference.repository, reference.tag, reference.plain_http) == (
        "registry.example.org:5000", "course/snaps", "v1", False,
    )  # fmt: skip
    assert reference.repository_url == "https://registry.example.org:5000/v2/course/snaps"
    assert Reference.parse(f"localhost/x@{DIGEST}").digest == DIGEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("course/snaps", "names no registry"),
        ("registry.example.org/Course", "not a valid repository name"),
        ("registry.example.org/x@sha256:12", "not a sha256 digest"),
        ("http://registry.example.org/x", "plain HTTP is only for a registry on the loopback address"),
    ],
)
def test_a_bad_reference_is_refused_saying_why(text: str, message: str) -> None:
    """No default registry, no odd names, and plain HTTP only on loopback."""
    with pytest.raises(RegistryError, match=message):
        Reference.parse(text)


def test_plain_http_is_allowed_on_loopback_only() -> None:
    """127.0.0.1, ::1 and localhost are loopback; a LAN address is not."""
    assert Reference.parse("http://127.0.0.1:5000/x").plain_http
    assert all(is_loopback(host) for host in ("127.0.0.1:5000", "[::1]:5000", "localhost:80", "localhost"))
    assert not any(is_loopback(host) for host in ("10.0.0.1:5000", "registry.example.org"))


def test_the_tag_holds_the_setup_key_and_the_hardware() -> None:
    """Another key or other hardware gives another tag; a tag is valid for the distribution API."""
    key = "f" * 64
    tag = snapshot_tag(key, {"cpu_model": "a"})
    assert tag.startswith(f"sk-{key}-") and len(tag) <= 128
    assert tag != snapshot_tag(key, {"cpu_model": "b"}) and tag != snapshot_tag("e" * 64, {"cpu_model": "a"})


def write_pages(path: Path, pages: list[bytes]) -> Path:
    """A page image made of these pages."""
    path.write_bytes(b"".join(pages))
    return path


def test_chunks_follow_the_content_so_shifted_pages_share_chunks(tmp_path: Path) -> None:
    """Pages inserted at the front shift every later page; most chunks of the rest are the same all the same."""
    pages = [os.urandom(PAGE) for _ in range(12000)]  # many chunks: the one the insertion touches is a small share
    first = list(chunk_file(write_pages(tmp_path / "a", pages)))
    second = list(chunk_file(write_pages(tmp_path / "b", [os.urandom(PAGE) for _ in range(5)] + pages)))
    assert sum(chunk.size for chunk in first) == len(pages) * PAGE
    assert all(chunk.size % PAGE == 0 and chunk.size <= MAX_PAGES * PAGE for chunk in first)
    known = {chunk.sha256 for chunk in first}
    new_bytes = sum(chunk.size for chunk in second if chunk.sha256 not in known)
    assert new_bytes <= 0.25 * len(pages) * PAGE, (new_bytes, len(first))
    assert new_bytes <= (MAX_PAGES + 5) * PAGE, "only the chunks up to the first cut after the insertion differ"


def manifest_of(files: dict[str, int]) -> Manifest:
    """A manifest listing files of these sizes."""
    return Manifest(
        id="0123456789ab", key="k", created="", size_bytes=sum(files.values()), rss_bytes=0, dump_duration_s=0,
        pid=1, versions={}, environment={}, hardware={},
        files={name: FileRecord(size, "0" * 64) for name, size in files.items()},
    )  # fmt: skip


def test_layers_must_tile_each_file_exactly(tmp_path: Path) -> None:
    """A gap, an overlap or a short file is refused before anything is fetched."""
    manifest = manifest_of({"pages-1.img": 8192})
    whole = [Layer(CHUNK_LAYER, DIGEST, 4096, "pages-1.img", 0), Layer(CHUNK_LAYER, DIGEST, 4096, "pages-1.img", 4096)]
    _check_tiling(whole, manifest)
    for layers in (whole[:1], [whole[0], Layer(CHUNK_LAYER, DIGEST, 4096, "pages-1.img", 2048)]):
        with pytest.raises(VerificationError):
            _check_tiling(layers, manifest)


def oci_manifest(title: str, media_type: str = CHUNK_LAYER) -> dict[str, object]:
    """A pulled OCI manifest with a manifest layer and one other layer."""
    layers = [
        {"mediaType": MANIFEST_LAYER, "digest": DIGEST, "size": 2, "annotations": {TITLE: "manifest.json"}},
        {"mediaType": media_type, "digest": DIGEST, "size": 2, "annotations": {TITLE: title}},
    ]
    return {"artifactType": ARTIFACT_TYPE, "layers": layers, "annotations": {"io.snapkernel.id": "0123456789ab"}}


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (oci_manifest("../../etc/passwd"), "not a plain file name"),
        (oci_manifest("pages-1.img", "application/x-tar"), "not a snapshot's"),
        ({**oci_manifest("core-1.img"), "artifactType": "application/vnd.other"}, "not a snapkernel snapshot"),
        ({**oci_manifest("core-1.img"), "annotations": {"io.snapkernel.id": "../x"}}, "not a snapshot id"),
    ],
)
def test_a_pulled_manifest_that_is_not_a_snapshots_is_refused(manifest: dict[str, object], message: str) -> None:
    """Titles become file names and ids folder names: anything but plain names is refused."""
    with pytest.raises(RegistryError, match=message):
        SnapshotArtifact.from_oci(manifest, "the test's manifest")
