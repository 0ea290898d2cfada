"""Locate CRIU, talk to it through pycriu's RPC (`criu swrk`), and read its logs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CriuUnavailable

if TYPE_CHECKING:
    import pycriu

MINIMUM_VERSION = (4, 0)
CRIU_ENV_VAR = "SNAPKERNEL_CRIU"
# Printed on every run where CRIU may not raise its own RLIMIT_NOFILE; says nothing about failures.
HARMLESS = ("Can't setup RLIMIT_NOFILE",)
LOG_LEVEL = 2  # errors and warnings: enough to say why CRIU refused, cheap for large images


def find_criu(explicit: str | os.PathLike[str] | None = None) -> str:
    """Return the CRIU binary to use: explicit, $SNAPKERNEL_CRIU, the environment's, then PATH."""
    candidates = [
        explicit,
        os.environ.get(CRIU_ENV_VAR),
        Path(sys.prefix) / "bin" / "criu",
        shutil.which("criu"),
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and Path(candidate).is_file():
            return str(candidate)
    raise CriuUnavailable("CRIU not found: run `make setup`, install CRIU >= 4.0, or set $SNAPKERNEL_CRIU")


def criu_version(binary: str) -> tuple[int, ...]:
    """Return the version of a CRIU binary as a tuple of integers."""
    try:
        output = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30, check=False).stdout
    except OSError as error:
        raise CriuUnavailable(f"cannot run {binary}: {error}") from error
    match = re.search(r"Version:\s*([\d.]+)", output)
    if not match:
        raise CriuUnavailable(f"cannot read the version of {binary}: {output.strip()!r}")
    return tuple(int(part) for part in match.group(1).split(".") if part)


def require_supported(binary: str) -> tuple[int, ...]:
    """Return the version of `binary`, refusing CRIU older than MINIMUM_VERSION."""
    version = criu_version(binary)
    if version < MINIMUM_VERSION:
        raise CriuUnavailable(
            f"{binary} is CRIU {'.'.join(map(str, version))}; snapkernel needs >= 4.0 "
            "(older releases fail on this kernel's vDSO): run `make setup`"
        )
    return version


def rpc_client(binary: str, *, unprivileged: bool = False) -> pycriu.criu:
    """Return a pycriu client that spawns `binary swrk` for each request (``--unprivileged`` when asked)."""
    try:
        import pycriu
    except ImportError as error:
        raise CriuUnavailable(
            "pycriu is not importable: run `make setup` (it installs pycriu from CRIU's lib/)"
        ) from error
    client = pycriu.criu()
    client.use_binary(binary)
    client.opts.log_level = LOG_LEVEL
    if unprivileged:
        client.opts.unprivileged = True
    return client


def log_excerpt(log_path: Path, limit: int = 15) -> str:
    """Return CRIU's error lines from a log (or its last lines when none is marked an error)."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no CRIU log at {log_path})"
    lines = [line for line in lines if not any(noise in line for noise in HARMLESS)]
    errors = [line for line in lines if "Error" in line or "error" in line]
    chosen = (errors or lines)[-limit:]
    return "CRIU log:\n" + "\n".join(f"  {line}" for line in chosen)
