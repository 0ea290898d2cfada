"""The manifest: what a snapshot is, where it came from, and the hashes of its image files."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import VerificationError

FORMAT_VERSION = 1


@dataclass(frozen=True)
class FileRecord:
    """Size and sha256 of one image file."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything recorded about one snapshot (stored as manifest.json beside its images)."""

    id: str
    key: str
    created: str
    size_bytes: int
    rss_bytes: int
    dump_duration_s: float
    pid: int
    versions: dict[str, str]
    environment: dict[str, Any]
    hardware: dict[str, Any]
    files: dict[str, FileRecord]
    pipes: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cuda_pids: list[int] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)  # snapkernel_engine.inputs.fingerprint_inputs
    # snapkernel_engine.inputs.fingerprint_held_files (empty in manifests written before it was recorded)
    held_files: dict[str, Any] = field(default_factory=dict)
    # The restore point this one's images are incremental to: pages they do not hold are the parent's.
    parent: str | None = None
    format: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest as JSON-ready data (a full image's without `parent`: as earlier versions wrote it)."""
        data = asdict(self)
        if self.parent is None:
            del data["parent"]
        return data

    def to_json(self) -> str:
        """Return the manifest as indented JSON text."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, origin: str = "manifest") -> Manifest:
        """Parse and check a manifest, naming the problem when it is malformed."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise VerificationError(f"{origin}: not valid JSON ({error})") from error
        if not isinstance(data, dict):
            raise VerificationError(f"{origin}: expected a JSON object")
        if data.get("format") != FORMAT_VERSION:
            raise VerificationError(f"{origin}: unsupported manifest format {data.get('format')!r}")
        try:
            files = {
                name: FileRecord(size=int(record["size"]), sha256=str(record["sha256"]))
                for name, record in data["files"].items()
            }
            return cls(**{**data, "files": files})
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise VerificationError(f"{origin}: malformed manifest ({error})") from error
