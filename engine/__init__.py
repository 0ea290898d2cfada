"""Jupyter-free snapshot engine: CRIU checkpoint/restore, fingerprints and the snapshot store."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .checkpoint import DumpResult, checkpoint
    from .errors import (
        CheckpointError,
        CriuUnavailable,
        RestoreError,
        RestoreTimeout,
        SnapshotBusy,
        SnapshotError,
        SnapshotNotFound,
        StoreError,
        VerificationError,
    )
    from .fingerprint import environment_fingerprint, hardware_fingerprint
    from .manifest import Manifest
    from .restore import RestoredTree, restore
    from .store import SnapshotStore

# Loaded on first use: the restore helper imports this package and must start quickly.
_EXPORTS = {
    "DumpResult": "checkpoint",
    "checkpoint": "checkpoint",
    "CheckpointError": "errors",
    "CriuUnavailable": "errors",
    "RestoreError": "errors",
    "RestoreTimeout": "errors",
    "SnapshotBusy": "errors",
    "SnapshotError": "errors",
    "SnapshotNotFound": "errors",
    "StoreError": "errors",
    "VerificationError": "errors",
    "environment_fingerprint": "fingerprint",
    "hardware_fingerprint": "fingerprint",
    "Manifest": "manifest",
    "RestoredTree": "restore",
    "restore": "restore",
    "SnapshotStore": "store",
}

__all__ = [
    "CheckpointError",
    "CriuUnavailable",
    "DumpResult",
    "Manifest",
    "RestoreError",
    "RestoreTimeout",
    "RestoredTree",
    "SnapshotBusy",
    "SnapshotError",
    "SnapshotNotFound",
    "SnapshotStore",
    "StoreError",
    "VerificationError",
    "__version__",
    "checkpoint",
    "environment_fingerprint",
    "hardware_fingerprint",
    "restore",
]


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
