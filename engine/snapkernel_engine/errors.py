"""Exceptions raised by the snapshot engine."""

from __future__ import annotations


class SnapshotError(Exception):
    """Base class for every error the engine raises."""


class CriuUnavailable(SnapshotError):
    """CRIU or pycriu is missing, too old, or cannot run here."""


class CheckpointError(SnapshotError):
    """CRIU refused or failed to dump a process tree."""

    def __init__(self, message: str, log_excerpt: str = "") -> None:
        super().__init__(f"{message}\n{log_excerpt}".rstrip())
        self.log_excerpt = log_excerpt


class RestoreError(SnapshotError):
    """CRIU failed to restore an image."""

    def __init__(self, message: str, log_excerpt: str = "") -> None:
        super().__init__(f"{message}\n{log_excerpt}".rstrip())
        self.log_excerpt = log_excerpt


class RestoreTimeout(RestoreError):
    """A restore did not finish in time (the machine may only have been busy)."""


class VerificationError(SnapshotError):
    """A snapshot's files or manifest do not match what was recorded at dump time."""


class SnapshotNotFound(SnapshotError, KeyError):
    """No snapshot with the given id exists in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "snapshot not found"


class SnapshotBusy(SnapshotError):
    """The snapshot is being restored and cannot be deleted now."""


class StoreError(SnapshotError):
    """The snapshot store's directory is unusable (ownership, permissions, layout)."""
