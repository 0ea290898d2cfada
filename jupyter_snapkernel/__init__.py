"""Jupyter integration of snapkernel: kernels that start from memory snapshots."""

from snapkernel_engine.version import __version__

from .hooks import after_restore, before_snapshot

__all__ = ["__version__", "after_restore", "before_snapshot"]


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_snapkernel.server.extension"}]
