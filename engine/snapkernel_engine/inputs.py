"""Fingerprints of what a snapshot's process read from outside itself (files, environment variables) and of
the files it held (mapped, open, its working folder), and the changes since, which make a snapshot stale."""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

# Larger files are compared by size and modification time only: hashing them at every start would cost more
# than the restore saves.
HASH_LIMIT_BYTES = 64 * 1024 * 1024


def _file_record(path: str) -> dict[str, Any] | None:
    """Size, mtime and (up to HASH_LIMIT_BYTES) sha256 of a file; None when it is gone."""
    try:
        info = os.stat(path)
        sha256 = None
        if info.st_size <= HASH_LIMIT_BYTES:
            with open(path, "rb") as handle:
                sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha256}


def _value_digest(value: str | None) -> str | None:
    """A digest of an environment value: the manifest keeps no secrets in clear."""
    return None if value is None else hashlib.sha256(value.encode()).hexdigest()


def fingerprint_inputs(
    files: Iterable[str],
    variables: Iterable[str],
    environ: Mapping[str, str],
    folder: str | None = None,
    relative: Iterable[str] = (),
) -> dict[str, Any]:
    """Record the files and environment variables a process read, as they are now.

    With the notebook's `folder`, each file inside it or opened by a `relative` path also records that path
    relative to the folder: the same setup run from another folder reads the file there instead.
    """
    records = {path: _file_record(path) for path in sorted(set(files))}
    opened_relative = set(relative)
    for path, record in records.items():
        if folder is not None and record is not None and (Path(path).is_relative_to(folder) or path in opened_relative):
            record["relative"] = os.path.relpath(path, folder)
    recorded: dict[str, Any] = {
        "files": {path: record for path, record in records.items() if record is not None},
        "env": {name: _value_digest(environ.get(name)) for name in sorted(set(variables))},
    }
    if folder is not None:
        recorded["folder"] = folder
    return recorded


def inputs_folder(recorded: Mapping[str, Any]) -> str | None:
    """The folder a snapshot's inputs are bound to: its notebook's, when the setup read files relative to it.

    None: the snapshot serves the same setup in any folder."""
    files = (recorded.get("files") or {}).values()
    bound = any(isinstance(record, dict) and record.get("relative") for record in files)
    folder = recorded.get("folder")
    return folder if bound and isinstance(folder, str) else None


def _file_changed(path: str, recorded: dict[str, Any]) -> str | None:
    """Say how a file differs from its record, or None when it does not."""
    try:
        info = os.stat(path)
    except OSError:
        return "was removed"
    if info.st_size == recorded["size"] and info.st_mtime_ns == recorded["mtime_ns"]:
        return None
    if recorded.get("sha256") is None or info.st_size != recorded["size"]:
        return "changed"
    current = _file_record(path)
    return None if current is not None and current["sha256"] == recorded["sha256"] else "changed"


def _relative(path: str, base: Path | None) -> str:
    """`path` relative to `base` when it lies inside it, else as it is."""
    if base is not None and Path(path).is_relative_to(base):
        return str(Path(path).relative_to(base))
    return path


def _ignored(name: str, patterns: Sequence[str], base: Path | None) -> bool:
    """Tell whether a file or variable matches one of the user's patterns (absolute, or relative to `base`)."""
    candidates = {name, _relative(name, base)}
    return any(fnmatch.fnmatchcase(candidate, pattern) for candidate in candidates for pattern in patterns)


def _copy_difference(path: str, recorded: Mapping[str, Any]) -> str | None:
    """Say how a file in another folder differs from the recorded one by content, or None when it is the same."""
    current = _file_record(path)
    if current is None:
        return "does not exist"
    if current["size"] != recorded["size"]:
        return "differs"
    if recorded.get("sha256") is not None:
        return None if current["sha256"] == recorded["sha256"] else "differs"
    return None if current["mtime_ns"] == recorded["mtime_ns"] else "differs"  # too large to hash: by mtime


def changed_inputs(
    recorded: Mapping[str, Any], environ: Mapping[str, str], ignore: Sequence[str] = (), base: Path | None = None
) -> list[str]:
    """Say which recorded inputs differ now, e.g. "data.csv changed since the snapshot"; paths relative to `base`.

    `base` is the folder of the notebook that would restore the snapshot. When the snapshot was built for a
    notebook in another folder, each file the setup read relative to its folder must also be the same file
    content in `base`: a cold run there would read that one."""
    reasons = []
    folder = recorded.get("folder")
    elsewhere = base is not None and isinstance(folder, str) and Path(folder) != base
    for path, record in sorted((recorded.get("files") or {}).items()):
        relative = record.get("relative")
        if _ignored(path, ignore, base) or (relative and _ignored(relative, ignore, None)):
            continue
        change = _file_changed(path, record)
        if change is not None:
            reasons.append(f"{_relative(path, base)} {change} since the snapshot")
        if elsewhere and relative:
            here = os.path.normpath(os.path.join(base, relative))  # type: ignore[arg-type]
            difference = _copy_difference(here, record)
            if difference is not None:
                reasons.append(f"{relative} {difference} here: the snapshot's setup read {path}")
    for name, digest in sorted((recorded.get("env") or {}).items()):
        if not _ignored(name, ignore, None) and _value_digest(environ.get(name)) != digest:
            reasons.append(f"environment variable {name} changed since the snapshot")
    return reasons


# Files of these kinds are no file CRIU reopens by path (devices, kernel interfaces, memory without a file).
NOT_REOPENED = ("/dev/", "/proc/", "/sys/", "/memfd:", "/SYSV", "/anon_hugepage")
HELD_CHANGES_SHOWN = 3


def _held_paths(pid: int) -> tuple[set[str], set[str]]:
    """The files a process maps or holds open, and its working folder, as CRIU will look them up at restore."""
    files: set[str] = set()
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            fields = line.split(None, 5)
            if len(fields) == 6:
                files.add(fields[5])
    with suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with suppress(OSError):
                files.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    folders: set[str] = set()
    with suppress(OSError):
        folders.add(os.readlink(f"/proc/{pid}/cwd"))
    usable = {path for path in files if path.startswith("/") and not path.endswith(" (deleted)")}
    return {path for path in usable if not path.startswith(NOT_REOPENED)}, folders


def _identity(path: str, folder: bool) -> dict[str, int] | None:
    """What CRIU checks of a file at restore (size, mode), and what tells a replaced one (inode, mtime).

    None when there is no such file or folder; PermissionError when this user cannot look it up."""
    try:
        info = os.stat(path)
    except PermissionError:
        raise
    except OSError:
        return None
    if folder:  # a folder's mtime changes with every file made in it: only a move or a mode change matter
        return {"ino": info.st_ino, "mode": info.st_mode} if stat.S_ISDIR(info.st_mode) else None
    if not stat.S_ISREG(info.st_mode):
        return None
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "ino": info.st_ino, "mode": info.st_mode}


def _identity_or_unreachable(path: str, folder: bool) -> dict[str, int] | None:
    """A held file's identity at dump time; None for one this user cannot look up (CRIU cannot either)."""
    try:
        return _identity(path, folder)
    except PermissionError:
        return None


def fingerprint_held_files(pids: Iterable[int]) -> dict[str, Any]:
    """Record the files a process tree maps or holds open and its working folders: a restore reopens them by path."""
    files: set[str] = set()
    folders: set[str] = set()
    for pid in pids:
        held, working = _held_paths(pid)
        files |= held
        folders |= working
    records = {path: _identity_or_unreachable(path, folder=False) for path in sorted(files)}
    folder_records = {path: _identity_or_unreachable(path, folder=True) for path in sorted(folders)}
    return {
        "files": {path: record for path, record in records.items() if record is not None},
        "folders": {path: record for path, record in folder_records.items() if record is not None},
    }


def _held_change(path: str, record: Mapping[str, Any], folder: bool) -> str | None:
    """Say how one held file or working folder differs from its record, or None when it does not."""
    try:
        now = _identity(path, folder)
    except PermissionError:
        return f"{path} cannot be reached by this user"
    if folder:
        if now is None or ("ino" in record and now["ino"] != record["ino"]):
            return f"the folder it ran in ({path}) moved or was removed since the snapshot"
        if now["mode"] != record.get("mode"):
            return f"the mode of the folder it ran in ({path}) changed since the snapshot"
        # CRIU enters it at restore: a folder another user made private (a course builder's) fails there.
        return None if os.access(path, os.X_OK) else f"this user cannot enter the folder it ran in ({path})"
    if now is None:
        return f"{path} moved or was removed since the snapshot"
    # A record without an inode (a snapshot fetched from another machine) is checked by what it holds.
    return None if {key: now[key] for key in record} == record else f"{path} changed since the snapshot"


def without_inodes(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """Held files and folders as recorded, less their inode numbers: those of a snapshot built on another machine
    say nothing of the files here, where its size, mtime and mode still tell a changed file."""
    return {
        kind: {path: {key: value for key, value in record.items() if key != "ino"} for path, record in entries.items()}
        for kind, entries in recorded.items()
    }


def held_files_changed(recorded: Mapping[str, Any]) -> list[str]:
    """Say which held files and working folders moved or changed since recorded (none: a restore finds them)."""
    folders = sorted((recorded.get("folders") or {}).items())
    files = sorted((recorded.get("files") or {}).items())
    changes = [_held_change(path, record, True) for path, record in folders]
    changes += [_held_change(path, record, False) for path, record in files]
    reasons = [change for change in changes if change is not None]
    if len(reasons) > HELD_CHANGES_SHOWN:
        reasons[HELD_CHANGES_SHOWN:] = [f"{len(reasons) - HELD_CHANGES_SHOWN} more files changed"]
    return reasons
