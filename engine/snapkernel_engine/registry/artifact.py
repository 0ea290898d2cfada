"""The OCI artifact of one snapshot: an empty config, its manifest and image files as layers (page images in
content-defined chunks), and annotations that let a node decide before fetching a byte of it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..fingerprint import differences, digest
from ..manifest import Manifest
from .client import DIGEST, RegistryError

ARTIFACT_TYPE = "application/vnd.snapkernel.snapshot.v1"
MANIFEST_LAYER = "application/vnd.snapkernel.manifest.v1+json"  # the snapshot's manifest.json
FILE_LAYER = "application/vnd.snapkernel.image.v1"  # a whole image file
CHUNK_LAYER = "application/vnd.snapkernel.image.chunk.v1"  # a piece of a page image, at OFFSET
EMPTY_CONFIG = {
    "mediaType": "application/vnd.oci.empty.v1+json",
    "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
    "size": 2,
    "data": "e30=",
}
EMPTY_CONFIG_BYTES = b"{}"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
PREFIX = "io.snapkernel."
ID, KEY, PARENT = f"{PREFIX}id", f"{PREFIX}key", f"{PREFIX}parent"
ENVIRONMENT, HARDWARE = f"{PREFIX}environment", f"{PREFIX}hardware"
CRIU, SIZE, SETUP_S = f"{PREFIX}criu", f"{PREFIX}size", f"{PREFIX}setup-seconds"
CHAIN_SIZE = f"{PREFIX}chain-size"  # bytes of the snapshot with the restore points it needs
OFFSET = f"{PREFIX}offset"
MANIFEST_TITLE = "manifest.json"
SNAPSHOT_ID = re.compile(r"[0-9a-f]{12}")
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def snapshot_tag(key: str, hardware: dict[str, Any]) -> str:
    """The tag of a snapshot: its setup key and its hardware, so a node asks for exactly what it could restore."""
    return f"sk-{re.sub(r'[^0-9a-f]', '', key.lower())[:64]}-{digest(hardware)[:16]}"


@dataclass(frozen=True)
class Layer:
    """One layer: a whole image file, a chunk of one at `offset`, or the manifest (`title` MANIFEST_TITLE)."""

    media_type: str
    digest: str
    size: int
    title: str
    offset: int = 0

    def descriptor(self) -> dict[str, Any]:
        """The layer's OCI descriptor."""
        annotations = {TITLE: self.title}
        if self.media_type == CHUNK_LAYER:
            annotations[OFFSET] = str(self.offset)
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, "annotations": annotations}


@dataclass(frozen=True)
class SnapshotArtifact:
    """What a registry holds of one snapshot: its layers and the annotations read before fetching."""

    layers: list[Layer]
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def snapshot_id(self) -> str:
        """The snapshot's id, as its annotations say (checked against its manifest once fetched)."""
        return self.annotations[ID]

    @property
    def parent(self) -> str | None:
        """The digest of the artifact of the restore point this snapshot is incremental to (None: a full image)."""
        return self.annotations.get(PARENT)

    @property
    def size(self) -> int:
        """Bytes of all its layers."""
        return sum(layer.size for layer in self.layers)

    @property
    def chain_size(self) -> int:
        """Bytes of the snapshot's files with those of the restore points it needs: what a pull fetches at most."""
        try:
            return max(int(self.annotations.get(CHAIN_SIZE, 0)), self.size)
        except ValueError:
            return self.size

    @property
    def setup_seconds(self) -> float:
        """How long the setup it saves ran, as its build recorded (0: not recorded)."""
        try:
            return max(float(self.annotations.get(SETUP_S, 0)), 0.0)
        except ValueError:
            return 0.0

    def hardware_differences(self, hardware: dict[str, Any]) -> list[str]:
        """What differs between the hardware it was built on and `hardware` (empty: it could restore there)."""
        return self._differences(HARDWARE, hardware)

    def environment_differences(self, environment: dict[str, Any]) -> list[str]:
        """What differs between the Python environment it was built in and `environment`."""
        return self._differences(ENVIRONMENT, environment)

    def _differences(self, annotation: str, current: dict[str, Any]) -> list[str]:
        """The fields of a fingerprint annotation that differ from `current` (a missing or bad one: all differ)."""
        try:
            recorded = json.loads(self.annotations.get(annotation, ""))
        except ValueError:
            return [f"its {annotation} annotation is not JSON"]
        return differences(recorded, current) if isinstance(recorded, dict) else [f"it has no {annotation} annotation"]

    def to_json(self) -> bytes:
        """The OCI image manifest, as the bytes that are pushed (their sha256 is the artifact's digest)."""
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": ARTIFACT_TYPE,
            "config": EMPTY_CONFIG,
            "layers": [layer.descriptor() for layer in self.layers],
            "annotations": self.annotations,
        }
        return json.dumps(manifest, indent=1, sort_keys=True).encode()

    @classmethod
    def from_oci(cls, manifest: dict[str, Any], where: str) -> SnapshotArtifact:
        """Read an OCI manifest as a snapshot's artifact; refuse anything else, naming `where` it came from."""
        if manifest.get("artifactType") != ARTIFACT_TYPE:
            raise RegistryError(f"{where} is not a snapkernel snapshot (artifactType {manifest.get('artifactType')!r})")
        annotations = manifest.get("annotations")
        if not isinstance(annotations, dict) or not all(isinstance(value, str) for value in annotations.values()):
            raise RegistryError(f"{where}: its annotations are not a map of strings")
        if not SNAPSHOT_ID.fullmatch(str(annotations.get(ID, ""))):
            raise RegistryError(f"{where}: {annotations.get(ID)!r} is not a snapshot id")
        if PARENT in annotations and not DIGEST.fullmatch(annotations[PARENT]):
            raise RegistryError(f"{where}: its parent {annotations[PARENT]!r} is not a sha256 digest")
        layers = [_layer(entry, where) for entry in manifest.get("layers") or []]
        if [layer.title for layer in layers if layer.media_type == MANIFEST_LAYER] != [MANIFEST_TITLE]:
            raise RegistryError(f"{where}: it holds no single snapshot manifest")
        return cls(layers, dict(annotations))


def _layer(entry: Any, where: str) -> Layer:
    """One layer of a pulled manifest, checked: a known media type, a sha256 digest, a plain file name."""
    try:
        media_type, layer_digest, size = entry["mediaType"], entry["digest"], int(entry["size"])
        title = entry["annotations"][TITLE]
        offset = int(entry["annotations"].get(OFFSET, 0))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RegistryError(f"{where}: a layer is not a descriptor with a title") from None
    if media_type not in {MANIFEST_LAYER, FILE_LAYER, CHUNK_LAYER}:
        raise RegistryError(f"{where}: a layer of media type {media_type!r} is not a snapshot's")
    if not DIGEST.fullmatch(str(layer_digest)) or size < 0 or offset < 0:
        raise RegistryError(f"{where}: layer {title!r} has a bad digest, size or offset")
    if not isinstance(title, str) or not FILE_NAME.fullmatch(title):
        raise RegistryError(f"{where}: layer title {title!r} is not a plain file name")
    return Layer(media_type, layer_digest, size, title, offset)


def artifact_annotations(manifest: Manifest, parent: str | None, chain_size: int) -> dict[str, str]:
    """The annotations of a snapshot's artifact: what a node checks before it fetches the snapshot."""
    annotations = {
        CHAIN_SIZE: str(chain_size),
        ID: manifest.id,
        KEY: manifest.key,
        ENVIRONMENT: json.dumps(manifest.environment, sort_keys=True),
        HARDWARE: json.dumps(manifest.hardware, sort_keys=True),
        CRIU: manifest.versions.get("criu", ""),
        SIZE: str(manifest.size_bytes),
        CREATED: manifest.created,
        SETUP_S: manifest.labels.get("setup_s", "0"),
    }
    if parent is not None:
        annotations[PARENT] = parent
    return annotations
