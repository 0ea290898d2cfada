"""Jupyter integration of snapkernel: kernels that start from memory snapshots."""

from engine.version import __version__

__all__ = ["__version__"]
