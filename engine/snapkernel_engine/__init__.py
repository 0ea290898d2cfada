"""Jupyter-free snapshot engine: CRIU checkpoint/restore, fingerprints and the snapshot store."""

from __future__ import annotations

import importlib

from .version import __version__

TYPE_CHECKING = False  # no typing import: the namespace init of every restore imports this package

if TYPE_CHECKING:
    from .checkpoint import DumpResult, dump_tree
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
    from .restore import RestoredTree, restore_tree
    from .store import SnapshotStore

# Loaded on first use: the restore helper imports this package and must start quickly.
_EXPORTS = {
    "DumpResult": "checkpoint",
    "dump_tree": "checkpoint",
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
    "restore_tree": "restore",
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
    "dump_tree",
    "environment_fingerprint",
    "hardware_fingerprint",
    "restore_tree",
]


def __getattr__(name: str) -> object:
    """Load an export's module on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
