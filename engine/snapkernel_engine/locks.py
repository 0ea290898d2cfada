"""Locked folders of the store: a snapshot's flock (shared while restored, exclusive while deleted), and the
staging and work folders a live build or restore holds locked so that a clean-up knows them from leftovers."""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import SnapshotBusy, SnapshotNotFound

LOCK = ".lock"
NEW_PREFIX = ".new-"  # a staging or work dir being created, before its lock is held


def new_locked_dir(parent: Path, name: str) -> int:
    """Create the private folder parent/name already locked (see remove_if_unlocked); return the lock's fd."""
    temporary = parent / f"{NEW_PREFIX}{secrets.token_hex(6)}"
    temporary.mkdir(mode=0o700)
    fd = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(temporary, parent / name)
    return fd


def remove_if_unlocked(path: Path) -> bool:
    """Remove a staging or work entry unless a live process holds its lock; tell whether it was removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # a symbolic link, or gone already
        path.unlink(missing_ok=True)
        return not path.exists()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)
    return True


def lock_snapshot(directory: Path, exclusive: bool) -> int:
    """Take a snapshot folder's lock (shared while restoring, exclusive while deleting); return its fd."""
    snapshot_id = directory.name
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise SnapshotNotFound(f"no snapshot {snapshot_id!r}") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if exclusive else fcntl.LOCK_SH)
    except BlockingIOError:
        os.close(fd)
        raise SnapshotBusy(f"snapshot {snapshot_id} is being restored; try again later") from None
    if not directory.is_dir():
        os.close(fd)
        raise SnapshotNotFound(f"snapshot {snapshot_id!r} was deleted")
    return fd


@contextmanager
def locked_snapshot(directory: Path, exclusive: bool) -> Iterator[Path]:
    """Hold a snapshot folder's lock for the duration of a block."""
    fd = lock_snapshot(directory, exclusive)
    try:
        yield directory
    finally:
        os.close(fd)
