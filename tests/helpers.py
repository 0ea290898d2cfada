"""Helpers shared by tests of every layer (no fixtures: plain functions)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def tree_digest(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: a file's bytes' hash, mode and owner; a folder's mode and owner."""
    digest = {}
    for path in sorted(folder.rglob("*")):
        info = path.lstat()
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        digest[str(path.relative_to(folder))] = f"{content} {info.st_mode:o} {info.st_uid}"
    return digest
