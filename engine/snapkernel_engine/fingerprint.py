"""Fingerprints of the Python environment and the hardware a snapshot was taken on."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import threading
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from .gpu import inventory

# Fingerprints are computed once and cached; threads asking at the same time (a server starting many
# kernels at once) wait for that one computation instead of each doing it again.
_COMPUTING = threading.Lock()
METADATA_SUFFIXES = (".dist-info", ".egg-info")


def digest(data: object) -> str:
    """Return a stable sha256 of JSON-serialisable data."""
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def distributions_digest() -> str:
    """Hash the names and versions of every installed distribution (recomputed only when one was added or removed)."""
    state = _installed_metadata_folders()
    with _COMPUTING:
        return _distributions_digest(state)


def _installed_metadata_folders() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Each import path folder holding distributions, with the names of their metadata folders
    (``NAME-VERSION.dist-info``): installing, upgrading or removing a distribution changes them; files written
    beside them, and folders added to the path that hold none (pycriu adds one), do not."""
    state = []
    for entry in sys.path:
        try:
            with os.scandir(entry or ".") as entries:
                names = sorted(item.name for item in entries if item.name.endswith(METADATA_SUFFIXES))
        except OSError:
            continue
        if names:
            state.append((entry, tuple(names)))
    return tuple(state)


@lru_cache(maxsize=4)
def _distributions_digest(installed_metadata: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """Hash the installed distributions' names and versions; `installed_metadata` only keys the cache."""
    installed = sorted({f"{dist.metadata['Name']}=={dist.version}".lower() for dist in metadata.distributions()})
    return digest(installed)


def environment_fingerprint(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Describe the Python environment: interpreter, installed distributions, and `extra` facts."""
    return {
        "python": os.path.realpath(sys.executable),
        "prefix": sys.prefix,
        "python_version": platform.python_version(),
        "implementation": sys.implementation.name,
        "distributions_sha256": distributions_digest(),
        **(extra or {}),
    }


def source_digest(*packages: str) -> str:
    """Hash the Python sources of imported packages (code a snapshot holds in memory)."""
    digest = hashlib.sha256()
    for name in packages:
        root = Path(sys.modules[name].__file__ or "").parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _cpuinfo() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    return fields


def hardware_fingerprint() -> dict[str, object]:
    """Describe the hardware and kernel: CPU model and flags, kernel release, NVIDIA GPUs (worked out once)."""
    with _COMPUTING:
        return _hardware_fingerprint()


@lru_cache(maxsize=1)
def _hardware_fingerprint() -> dict[str, object]:
    """The hardware fingerprint, computed."""
    cpu = _cpuinfo()
    flags = sorted((cpu.get("flags") or cpu.get("Features") or "").split())
    return {
        "arch": platform.machine(),
        "cpu_model": cpu.get("model name") or cpu.get("CPU part") or platform.processor(),
        "cpu_flags_sha256": digest(flags),
        "kernel_release": platform.release(),
        "nvidia": inventory().to_fingerprint(),
    }


def differences(recorded: Mapping[str, object], current: Mapping[str, object]) -> list[str]:
    """Name the fields that differ between a recorded and the current fingerprint."""
    return sorted(name for name in recorded.keys() | current.keys() if recorded.get(name) != current.get(name))
