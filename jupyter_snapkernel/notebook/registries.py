"""Snapshots in the registries an administrator trusts: the one that matches a notebook's setup on this machine,
fetching it now or in the background, and pushing what a build made."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapkernel_engine import Manifest, SnapshotError, SnapshotStore
from snapkernel_engine.fingerprint import environment_fingerprint, hardware_fingerprint
from snapkernel_engine.registry.artifact import snapshot_tag
from snapkernel_engine.registry.client import Reference
from snapkernel_engine.registry.transfer import Found, Transfer, find_snapshot, pull_snapshot, push_snapshot

from ..config import SnapKernelSettings
from .state import builds_dir, write_private_json

PUSH_FAILED = "push to "  # how push_after_build's line of a failed push starts
QUERY_TIMEOUT_S = 5.0  # a start asks each trusted repository once: a registry that does not answer costs this
PULLS = "pulls.json"  # measured pull throughput, by registry, in the builds folder of the user's store


@dataclass(frozen=True)
class RegistryMatch:
    """A snapshot in a trusted repository that this machine can restore, and why others were passed over."""

    found: Found | None
    passed_over: list[str]  # one line each: a registry that failed, or a snapshot built for another machine


def find_in_registries(repositories: Sequence[str], key: str, store: SnapshotStore) -> RegistryMatch:
    """Ask each repository, in order, for the snapshot tagged with `key` and this machine's hardware; the first
    built in this Python environment matches (a start then restores it)."""
    tag = snapshot_tag(key, hardware_fingerprint())
    environment = environment_fingerprint(store.environment_extra)
    passed_over: list[str] = []
    for repository in repositories:
        try:
            found = find_snapshot(Reference.parse(repository).at(tag=tag), environment, QUERY_TIMEOUT_S)
        except SnapshotError as error:
            passed_over.append(str(error))
            continue
        if found is None:
            continue
        if found.unusable:
            passed_over.append(f"{found.reference}: not fetched: {'; '.join(found.unusable)}")
            continue
        return RegistryMatch(found, passed_over)
    return RegistryMatch(None, passed_over)


def _pulls_path(store: SnapshotStore) -> Path:
    """Where the user's store records how fast each registry delivered."""
    return builds_dir(store) / PULLS


def measured_throughput(store: SnapshotStore, registry: str) -> float | None:
    """Bytes per second of the last pull from `registry` into this store (None: never measured)."""
    try:
        value = json.loads(_pulls_path(store).read_text()).get(registry)
        return float(value) if value and float(value) > 0 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def record_throughput(store: SnapshotStore, registry: str, transfer: Transfer) -> None:
    """Remember how fast a pull from `registry` went (pulls that moved little measure nothing)."""
    if transfer.moved_bytes < 2**20:
        return
    try:
        record = json.loads(_pulls_path(store).read_text())
    except (OSError, ValueError):
        record = {}
    record = record if isinstance(record, dict) else {}
    record[registry] = round(transfer.throughput)
    write_private_json(_pulls_path(store), record)


def fetch_now(found: Found, store: SnapshotStore) -> tuple[bool, str]:
    """Whether a start waits for this snapshot (its expected pull time is shorter than the setup it saves), and
    why, in words for the start report."""
    registry, setup_s = found.reference.registry, found.artifact.setup_seconds
    throughput = measured_throughput(store, registry)
    if throughput is None:
        return False, f"no pull from {registry} was measured yet"
    expected_s = found.artifact.chain_size / throughput
    comparison = "shorter" if expected_s < setup_s else "not shorter"
    words = (
        f"expected pull {expected_s:.1f} s ({found.artifact.chain_size / 1e6:.0f} MB at {throughput / 1e6:.0f} MB/s)"
    )
    return expected_s < setup_s, f"{words} is {comparison} than its setup ({setup_s:.1f} s)"


def fetch_lock_path(store: SnapshotStore, key: str) -> Path:
    """The lock a fetch of a setup key holds while it runs (one fetch of a key at a time)."""
    return builds_dir(store) / f"{key}.fetch"


def fetch_running(store: SnapshotStore, key: str) -> bool:
    """Whether another process fetches this setup key's snapshot now."""
    try:
        fd = os.open(fetch_lock_path(store, key), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def pull_into(store: SnapshotStore, found: Found, key: str, progress: Callable[[str], None] | None = None) -> Transfer:
    """Fetch a found snapshot into the store, one fetch of a key at a time, and remember the throughput."""
    store.ensure_layout()
    builds_dir(store).mkdir(mode=0o700, exist_ok=True)
    fd = os.open(fetch_lock_path(store, key), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a fetch already running finishes first: this one then finds it here
        transfer = pull_snapshot(store, found, progress)
    finally:
        os.close(fd)
    record_throughput(store, found.reference.registry, transfer)
    return transfer


def fetch_in_background(store: SnapshotStore, found: Found, key: str) -> None:
    """Start a process of its own that fetches the snapshot into the store (it outlives this launch)."""
    store.ensure_layout()
    builds_dir(store).mkdir(mode=0o700, exist_ok=True)
    log = builds_dir(store) / f"{key}.log"
    command = [sys.executable, "-m", "jupyter_snapkernel.cli.commands", "--store", str(store.root), "pull"]
    command += [str(found.reference), "--key", key, "--quiet"]
    with open(log, "ab") as output:
        os.chmod(log, 0o600)
        fetch = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    # Reaped when it ends (a server outlives it); a launcher that ends first leaves it to init.
    threading.Thread(target=fetch.wait, name="snapkernel-fetch-reaper", daemon=True).start()


def push_after_build(settings: SnapKernelSettings, store: SnapshotStore, manifest: Manifest) -> str | None:
    """Push a snapshot a build published to the first trusted repository, where the administrator asks for it
    (`push_on_build`); return a line saying what happened (None: nothing was asked)."""
    if not settings.push_on_build or not settings.registries:
        return None
    try:
        reference = Reference.parse(settings.registries[0])
        pushed = push_snapshot(store, manifest.id, reference)
    except SnapshotError as error:  # a bad entry too: the snapshot is published all the same
        return f"{PUSH_FAILED}{settings.registries[0]} failed: {error}"
    return transfer_line("pushed", pushed, reference)


def transfer_line(verb: str, transfer: Transfer, reference: Reference) -> str:
    """One line for a push or pull: what, where, and how many bytes moved how fast."""
    return (
        f"{verb} snapshot {transfer.snapshot.id} ({reference.registry}/{reference.repository}:{transfer.tag}): "
        f"{transfer.moved_bytes / 1e6:.1f} MB of {transfer.total_bytes / 1e6:.1f} MB moved in {transfer.seconds:.1f} s"
        + (f" ({transfer.throughput / 1e6:.0f} MB/s)" if transfer.moved_bytes else "")
    )
