"""Push a store's snapshot to a registry and pull one into a store: every byte checked against its digest on the
way in, nothing published until all of it is."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SnapshotNotFound, VerificationError
from ..fingerprint import hardware_fingerprint
from ..inputs import without_inodes
from ..integrity import IMAGES, sha256
from ..manifest import FileRecord, Manifest
from ..store import SnapshotStore
from .artifact import (
    CHUNK_LAYER,
    EMPTY_CONFIG,
    EMPTY_CONFIG_BYTES,
    FILE_LAYER,
    MANIFEST_LAYER,
    MANIFEST_TITLE,
    Layer,
    SnapshotArtifact,
    artifact_annotations,
    snapshot_tag,
)
from .chunks import chunk_file
from .client import DEFAULT_TIMEOUT_S, Reference, RegistryClient, RegistryError

Progress = Callable[[str], None]
TRANSFERS = 4  # blobs sent or fetched at once: requests overlap their round trips and the registry's work


@dataclass(frozen=True)
class Transfer:
    """What one push or pull moved: the snapshot, its artifact's digest and tag, and the bytes and time it took."""

    snapshot: Manifest
    digest: str
    tag: str
    total_bytes: int  # the artifact's layers, its restore points' included
    moved_bytes: int  # what went over the wire: blobs the other side lacked
    seconds: float

    @property
    def throughput(self) -> float:
        """Bytes moved per second (0: nothing moved)."""
        return self.moved_bytes / self.seconds if self.seconds > 0 else 0.0


def _is_page_image(name: str) -> bool:
    """Whether an image file holds memory pages (it is cut into content-defined chunks)."""
    return name.startswith("pages-") and name.endswith(".img")


def push_snapshot(
    store: SnapshotStore, snapshot_id: str, reference: Reference, progress: Progress | None = None
) -> Transfer:
    """Push a verified snapshot, after the restore points it is incremental to, each tagged by its key and hardware
    (and the snapshot also by `reference`'s tag, if it has one). Blobs the repository holds are not sent again."""
    started = time.perf_counter()
    client = RegistryClient(reference)
    manifest = store.verify(snapshot_id)
    parent_digest, total, moved, chain_size = None, 0, 0, 0
    for member in reversed(store.chain(manifest)):  # the oldest restore point first: a child names its parent
        chain_size += member.size_bytes
        folder = store.snapshots_dir / member.id
        artifact, sent = _push_one(client, folder, member, (parent_digest, chain_size), progress)
        tag = snapshot_tag(member.key, member.hardware)
        parent_digest = client.put_manifest(artifact.to_json(), tag)
        total, moved = total + artifact.size, moved + sent
    assert parent_digest is not None
    if reference.tag:
        client.put_manifest(artifact.to_json(), reference.tag)
    tag = reference.tag or snapshot_tag(manifest.key, manifest.hardware)
    return Transfer(manifest, parent_digest, tag, total, moved, time.perf_counter() - started)


def _push_one(
    client: RegistryClient, folder: Path, manifest: Manifest, chain: tuple[str | None, int], progress: Progress | None
) -> tuple[SnapshotArtifact, int]:
    """Upload the blobs of one snapshot the repository lacks, several at once; return its artifact and the bytes
    sent."""
    manifest_bytes = (folder / MANIFEST_TITLE).read_bytes()
    layers = [Layer(MANIFEST_LAYER, _sha256(manifest_bytes), len(manifest_bytes), MANIFEST_TITLE)]
    sent = _upload(client, manifest_bytes, layers[0].digest)
    _upload(client, EMPTY_CONFIG_BYTES, str(EMPTY_CONFIG["digest"]))  # every artifact's: not the snapshot's bytes
    images = folder / IMAGES
    for name in sorted(manifest.files):
        path = images / name
        if _is_page_image(name):
            layers += [Layer(CHUNK_LAYER, f"sha256:{c.sha256}", c.size, name, c.offset) for c in chunk_file(path)]
        else:
            layers.append(Layer(FILE_LAYER, "sha256:" + sha256(path), path.stat().st_size, name))
    unique = list({layer.digest: layer for layer in layers[1:]}.values())

    def upload(worker: RegistryClient, layer: Layer) -> int:
        """Send one layer's bytes, read from its file, unless the repository holds them."""
        with open(images / layer.title, "rb") as handle:
            return _upload(worker, lambda: os.pread(handle.fileno(), layer.size, layer.offset), layer.digest)

    sent += sum(in_parallel(client.reference, upload, unique))
    if progress is not None:
        progress(f"{manifest.id}: pushed {len(layers)} layers, {sent / 1e6:.1f} MB sent")
    return SnapshotArtifact(layers, artifact_annotations(manifest, *chain)), sent


def in_parallel(reference: Reference, work: Callable[[RegistryClient, Layer], int], layers: list[Layer]) -> list[int]:
    """Run `work` on every layer, TRANSFERS at a time, each worker thread with a client (a session) of its own."""
    local = threading.local()

    def run(layer: Layer) -> int:
        if not hasattr(local, "client"):
            local.client = RegistryClient(reference)
        return work(local.client, layer)

    with ThreadPoolExecutor(TRANSFERS, thread_name_prefix="snapkernel-registry") as pool:
        return list(pool.map(run, layers))


def _upload(client: RegistryClient, data: bytes | Callable[[], bytes], digest: str) -> int:
    """Upload a blob unless the repository holds it; return the bytes sent."""
    if client.has_blob(digest):
        return 0
    payload = data() if callable(data) else data
    client.put_blob(payload, digest)
    return len(payload)


def _sha256(data: bytes) -> str:
    """A blob's digest."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Found:
    """A snapshot's artifact in a registry, read before fetching it, and why this machine cannot use it."""

    reference: Reference
    digest: str
    artifact: SnapshotArtifact
    unusable: list[str]  # empty: it was built for this machine's hardware


def find_snapshot(
    reference: Reference, environment: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT_S
) -> Found | None:
    """The artifact at a reference's tag or digest, checked against this machine's hardware (and `environment`,
    a Python environment's fingerprint, where given); None: there is none."""
    client = RegistryClient(reference, timeout)
    at = reference.digest or reference.tag
    if at is None:
        raise RegistryError(f"{reference} names no tag or digest to pull")
    fetched = client.manifest(at)
    if fetched is None:
        return None
    oci, digest = fetched
    artifact = SnapshotArtifact.from_oci(oci, f"{reference.at(digest=digest)}")
    unusable = []
    differs = artifact.hardware_differences(hardware_fingerprint())
    if differs:
        unusable.append(f"built for other hardware ({', '.join(differs)})")
    differs = artifact.environment_differences(environment) if environment is not None else []
    if differs:
        unusable.append(f"built in another Python environment ({', '.join(differs)})")
    return Found(reference.at(digest=digest), digest, artifact, unusable)


def pull_snapshot(store: SnapshotStore, found: Found, progress: Progress | None = None) -> Transfer:
    """Fetch a found snapshot, with the restore points it needs, into `store`; publish each only once every byte
    matches its digest and every file its manifest's hash. Refuse one built for other hardware."""
    if found.unusable:
        raise RegistryError(f"{found.reference} is not fetched: {'; '.join(found.unusable)}")
    started = time.perf_counter()
    client = RegistryClient(found.reference)
    manifest, total, moved = _pull_chain(client, store, found.artifact, found.digest, progress)
    tag = snapshot_tag(manifest.key, manifest.hardware)
    return Transfer(manifest, found.digest, tag, total, moved, time.perf_counter() - started)


def _pull_chain(
    client: RegistryClient, store: SnapshotStore, artifact: SnapshotArtifact, digest: str, progress: Progress | None
) -> tuple[Manifest, int, int]:
    """Pull an artifact after its parent; return its manifest, the bytes of the chain and the bytes fetched."""
    total, moved = artifact.size, 0
    if artifact.parent is not None:
        fetched = client.manifest(artifact.parent)
        if fetched is None:
            raise RegistryError(f"{client.reference} lacks restore point {artifact.parent} of snapshot {digest}")
        parent = SnapshotArtifact.from_oci(fetched[0], f"{client.reference.at(digest=artifact.parent)}")
        _, parent_total, moved = _pull_chain(client, store, parent, artifact.parent, progress)
        total += parent_total
    manifest = Manifest.from_json(_blob_bytes(client, artifact.layers[0]).decode(), f"{digest}'s manifest")
    _check_manifest(manifest, artifact, digest)
    # Its held files are checked here by size, mtime and mode: the builder's inode numbers mean nothing here.
    manifest = dataclasses.replace(manifest, held_files=without_inodes(manifest.held_files))
    try:
        present = store.get(manifest.id)
    except (SnapshotNotFound, VerificationError):  # absent, or damaged: fetched and published afresh
        present = None
    if present is not None:
        if present.key != manifest.key or present.files != manifest.files:
            raise VerificationError(f"snapshot {manifest.id} in the store differs from the one of {digest}")
        return present, total, moved
    store.add_fetched(manifest, lambda images: _fetch_files(client.reference, artifact, manifest, images))
    if progress is not None:
        progress(f"{manifest.id}: fetched")
    return manifest, total, moved + sum(record.size for record in manifest.files.values())


def _check_manifest(manifest: Manifest, artifact: SnapshotArtifact, digest: str) -> None:
    """Check that a pulled snapshot manifest is the one its artifact announced and names exactly its layers."""
    if manifest.id != artifact.snapshot_id:
        raise VerificationError(f"{digest}: its manifest is of snapshot {manifest.id}, not {artifact.snapshot_id}")
    titles = {layer.title for layer in artifact.layers[1:]}
    if titles != set(manifest.files) or artifact.layers[0].media_type != MANIFEST_LAYER:
        raise VerificationError(f"{digest}: its layers are not the image files its manifest lists")


def _blob_bytes(client: RegistryClient, layer: Layer) -> bytes:
    """A small blob, whole, checked against its digest and size."""
    data = b"".join(client.blob(layer.digest))
    if len(data) != layer.size or _sha256(data) != layer.digest:
        raise VerificationError(f"blob {layer.digest[:19]} ({layer.title}) does not match its digest")
    return data


def _fetch_files(
    reference: Reference, artifact: SnapshotArtifact, manifest: Manifest, images: Path
) -> dict[str, FileRecord]:
    """Write every image file of an artifact into `images` from its layers, several at once, checking each blob's
    digest as it arrives; return each file's size and sha256 as computed here."""
    files = artifact.layers[1:]
    _check_tiling(files, manifest)
    for name, record in manifest.files.items():
        with open(images / name, "xb") as handle:
            handle.truncate(record.size)

    def fetch(worker: RegistryClient, layer: Layer) -> int:
        """Write one layer at its offset, checking its digest and size."""
        blob_hash, size = hashlib.sha256(), 0
        with open(images / layer.title, "r+b") as handle:
            for data in worker.blob(layer.digest):
                if size + len(data) > layer.size:
                    break
                blob_hash.update(data)
                os.pwrite(handle.fileno(), data, layer.offset + size)
                size += len(data)
            os.fsync(handle.fileno())
        if size != layer.size or f"sha256:{blob_hash.hexdigest()}" != layer.digest:
            raise VerificationError(
                f"blob {layer.digest[:19]} of {layer.title} does not match its digest: the registry's copy is damaged "
                "or was changed"
            )
        return size

    in_parallel(reference, fetch, files)
    return {name: FileRecord((images / name).stat().st_size, sha256(images / name)) for name in manifest.files}


def _check_tiling(layers: list[Layer], manifest: Manifest) -> None:
    """Check that the layers of each image file cover it exactly once, end to end, at the manifest's size."""
    ends: dict[str, int] = {}
    for layer in sorted(layers, key=lambda layer: (layer.title, layer.offset)):
        if layer.offset != ends.get(layer.title, 0):
            raise VerificationError(f"{layer.title}: its layers leave a gap or overlap at byte {layer.offset}")
        ends[layer.title] = layer.offset + layer.size
    for name, record in manifest.files.items():
        if ends.get(name, 0) != record.size:
            raise VerificationError(
                f"{name}: its layers hold {ends.get(name, 0)} bytes, its manifest says {record.size}"
            )
