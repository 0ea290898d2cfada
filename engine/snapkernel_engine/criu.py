"""Locate CRIU, talk to it through pycriu's RPC (`criu swrk`), and read its logs.

The namespace init of every restore loads this module: imports are kept to what each function needs.
"""

from __future__ import annotations

import functools
import os
import sys

from .errors import CriuUnavailable

TYPE_CHECKING = False  # no typing import for annotations alone: the namespace init of every restore loads this
if TYPE_CHECKING:
    import pycriu

MINIMUM_VERSION = (4, 0)
CRIU_ENV_VAR = "SNAPKERNEL_CRIU"
# Printed on every run where CRIU may not raise its own RLIMIT_NOFILE; says nothing about failures.
HARMLESS = ("Can't setup RLIMIT_NOFILE",)
LOG_LEVEL = 2  # errors and warnings: enough to say why CRIU refused, cheap for large images


def find_criu(explicit: str | os.PathLike[str] | None = None) -> str:
    """Return the CRIU binary to use: explicit, $SNAPKERNEL_CRIU, the environment's, then PATH."""
    import shutil

    candidates = [
        explicit,
        os.environ.get(CRIU_ENV_VAR),
        os.path.join(sys.prefix, "bin", "criu"),
        shutil.which("criu"),
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return str(candidate)
    raise CriuUnavailable(
        "CRIU not found: run `jupyter snapkernel install-criu`, install CRIU >= 4.0, or set $SNAPKERNEL_CRIU"
    )


def criu_version(binary: str) -> tuple[int, ...]:
    """Return the version of a CRIU binary as a tuple of integers (asked once per build of the binary)."""
    try:
        stat = os.stat(binary)
    except OSError as error:
        raise CriuUnavailable(f"cannot run {binary}: {error}") from error
    return _version_of(binary, (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _version_of(binary: str, identity: tuple[int, ...]) -> tuple[int, ...]:
    """Run `binary --version`; `identity` (its inode and mtime) makes a replaced binary be asked again."""
    import re
    import subprocess

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
            "(older releases fail on this kernel's vDSO): run `jupyter snapkernel install-criu`"
        )
    return version


def rpc_client(binary: str, *, unprivileged: bool = False) -> pycriu.criu:
    """Return a pycriu client that spawns `binary swrk` for each request (``--unprivileged`` when asked)."""
    try:
        import pycriu
    except ImportError as error:
        raise CriuUnavailable(
            "pycriu is not importable: run `jupyter snapkernel install-criu` (it installs pycriu from CRIU's lib/)"
        ) from error
    client = pycriu.criu()
    client.use_binary(binary)
    client.opts.log_level = LOG_LEVEL
    if unprivileged:
        client.opts.unprivileged = True
    return client


def log_excerpt(log_path: str | os.PathLike[str], limit: int = 15) -> str:
    """Return CRIU's error lines from a log (or its last lines when none is marked an error)."""
    try:
        with open(log_path, errors="replace") as log:
            lines = log.read().splitlines()
    except OSError:
        return f"(no CRIU log at {os.fspath(log_path)})"
    lines = [line for line in lines if not any(noise in line for noise in HARMLESS)]
    errors = [line for line in lines if "Error" in line or "error" in line]
    chosen = (errors or lines)[-limit:]
    return "CRIU log:\n" + "\n".join(f"  {line}" for line in chosen)


@functools.lru_cache(maxsize=1)
def pycriu_search_path() -> tuple[str, ...]:
    """The folders pycriu and its protobuf are installed in, for a Python started without `site`."""
    import importlib.util

    folders: list[str] = []
    for name, depth in (("pycriu", 1), ("google.protobuf", 2)):
        try:
            spec = importlib.util.find_spec(name)
        except ImportError:
            spec = None
        if spec is None or not spec.submodule_search_locations:
            continue
        folder = next(iter(spec.submodule_search_locations))
        for _ in range(depth):
            folder = os.path.dirname(folder)
        if folder not in folders:
            folders.append(folder)
    return tuple(folders)


RESTORE_STATS = "stats-restore"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """The protobuf varint at `at` in `data`, and where the next field starts."""
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if byte < 0x80:
            return value, at


def _fields(message: bytes) -> dict[int, int | bytes]:
    """The varint and length-delimited fields of a protobuf message, by number (the last of each)."""
    fields: dict[int, int | bytes] = {}
    at = 0
    while at < len(message):
        tag, at = _varint(message, at)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            fields[number], at = _varint(message, at)
        elif wire_type == 2:
            length, at = _varint(message, at)
            fields[number], at = message[at : at + length], at + length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
    return fields


def restore_seconds(work_dir: str | os.PathLike[str]) -> float | None:
    """CRIU's own restore time, from the stats it wrote into a restore's work folder (None: none readable).

    Read by hand: the namespace init of every restore reports it, and pycriu's image module loads every
    image format first."""
    try:
        with open(os.path.join(work_dir, RESTORE_STATS), "rb") as stats:
            data = stats.read()
        # Two magics, the entry's size, then StatsEntry{2: RestoreStatsEntry{4: restore_time in µs}}
        restore = _fields(data[12:]).get(2)
        micros = _fields(restore).get(4) if isinstance(restore, bytes) else None
    except (OSError, IndexError, ValueError):
        return None
    return micros / 1e6 if isinstance(micros, int) else None
