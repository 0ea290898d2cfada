"""Trust and integrity of the store's files: who could have written a snapshot, whether its images are
exactly those its manifest names, their sha256, and the private cache of hashes already checked."""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pwd
import re
import secrets
import stat
from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Literal

from .errors import VerificationError
from .manifest import FileRecord, Manifest
from .stages import StageClock

VerifyMode = Literal["sha256", "size"]
IMAGES = "images"


def fsync_path(path: Path) -> None:
    """Flush a file's or folder's metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256(path: Path) -> str:
    """The hex sha256 of a file's content."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def identity(path: Path) -> builtins.list[int]:
    """What changes whenever a file's content may have changed (ctime cannot be set back)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def read_no_follow(path: Path) -> str:
    """Read a small text file that must not be a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as handle:
        return handle.read()


def write_json(path: Path, data: object, mode: int) -> None:
    """Replace a small JSON file atomically; a no-op where the file system is read-only."""
    temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
    try:
        temporary.write_text(json.dumps(data))
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except OSError:
        with suppress(OSError):  # a read-only file system refuses even to unlink what is not there
            temporary.unlink(missing_ok=True)


def owner_name(uid: int) -> str:
    """A uid with its user name, where it has one."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _owners(trusted_owners: Collection[int]) -> str:
    """The trusted owners, for a message."""
    return " or ".join(owner_name(uid) for uid in sorted(trusted_owners))


def untrusted_store_reason(root: Path, snapshots_dir: Path, trusted_owners: Collection[int]) -> str | None:
    """Say why a store's folder could have been changed by someone not trusted (None: it could not).

    Its folder (and the link to it, if it is one) and its snapshots folder must belong to a trusted
    owner and be writable by no one else: whoever else could write there could run code as this user.
    """
    checks: list[tuple[str, os.stat_result]] = []
    try:
        checks.append(("its folder", root.lstat()))
        if stat.S_ISLNK(checks[0][1].st_mode):
            checks.append(("the folder its link points to", root.stat()))
        if os.path.lexists(snapshots_dir):
            checks.append(("its snapshots folder", snapshots_dir.lstat()))
    except FileNotFoundError:
        return None  # nothing there yet: nothing to restore
    except OSError as error:
        return f"its folder cannot be inspected ({error.strerror})"
    for what, info in checks:
        if info.st_uid not in trusted_owners:
            return f"{what} belongs to {owner_name(info.st_uid)}, not to {_owners(trusted_owners)}"
        if stat.S_ISLNK(info.st_mode):
            if what != "its folder":
                return f"{what} is a symbolic link"
        elif info.st_mode & 0o022:
            return f"{what} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def untrusted_folder_reason(root: Path, directory: Path, trusted_owners: Collection[int]) -> str | None:
    """Say why a snapshot folder or one of its files could have been changed by someone not trusted."""
    try:
        checks = [(directory, directory.lstat())]
        with os.scandir(directory) as entries:
            checks += [(Path(entry.path), entry.stat(follow_symlinks=False)) for entry in entries]
        images = directory / IMAGES
        if images.is_dir() and not images.is_symlink():
            with os.scandir(images) as entries:
                checks += [(Path(entry.path), entry.stat(follow_symlinks=False)) for entry in entries]
    except FileNotFoundError:
        return None  # what is missing is reported by the checks that follow
    except OSError as error:
        return f"cannot inspect it ({error.strerror})"
    for path, info in checks:
        name = str(path.relative_to(root))
        if stat.S_ISLNK(info.st_mode):
            return f"{name} is a symbolic link"
        if info.st_uid not in trusted_owners:
            return f"{name} belongs to {owner_name(info.st_uid)}, not to {_owners(trusted_owners)}"
        if info.st_mode & 0o022:
            return f"{name} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def check_files(images: Path, manifest: Manifest) -> None:
    """Check that the image files are exactly the manifest's, at their recorded sizes."""
    snapshot_id = manifest.id
    present = {path.name for path in images.iterdir()} if images.is_dir() else set()
    if not present:
        raise VerificationError(f"snapshot {snapshot_id}: no {IMAGES}/ folder")
    for name in sorted(present - manifest.files.keys()):
        raise VerificationError(f"snapshot {snapshot_id}: unexpected file {IMAGES}/{name}")
    for name, record in sorted(manifest.files.items()):
        if name not in present:
            raise VerificationError(f"snapshot {snapshot_id}: missing file {IMAGES}/{name}")
        size = (images / name).stat().st_size
        if size != record.size:
            raise VerificationError(
                f"snapshot {snapshot_id}: {IMAGES}/{name} has {size} bytes, expected "
                f"{record.size} ({'truncated' if size < record.size else 'grown'})"
            )


def apply_modes(folder: Path, dir_mode: int, file_mode: int) -> None:
    """Give a staged snapshot's folders and files the store's modes (read-only to others)."""
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, dir_mode if path.is_dir() else file_mode)


def _fsync_each(paths: builtins.list[Path]) -> None:
    """Flush files to disk, one after another."""
    for path in paths:
        fsync_path(path)


def seal(
    staging: Path,
    images: Path,
    dir_mode: int,
    file_mode: int,
    clock: StageClock,
    hashed: Mapping[str, FileRecord] | None = None,
) -> dict[str, FileRecord]:
    """Make everything CRIU wrote read-only to others (with the store's modes); fsync and hash the images.

    `hashed` are the images already hashed as they were written (snapkernel_engine.page_hashing); the rest are
    hashed here (CPU, from the page cache) while a thread waits for the disk to take the same bytes: nothing
    writes the images any more, so what is hashed is what is flushed."""
    apply_modes(staging, dir_mode, file_mode)
    hashed = hashed or {}
    paths = sorted(images.iterdir())
    with ThreadPoolExecutor(1, thread_name_prefix="snapkernel-fsync") as flusher:
        flushed = flusher.submit(_fsync_each, paths)
        files = {
            path.name: hashed.get(path.name) or FileRecord(size=path.stat().st_size, sha256=sha256(path))
            for path in paths
        }
        clock.lap("hash")
        flushed.result()
    fsync_path(images)
    clock.lap("fsync")
    return files


class VerifiedCache:
    """The hashes this user has checked, kept out of the snapshot folders (whoever could write those could
    otherwise vouch for files they changed): a file whose identity is unchanged is not hashed again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def verify(self, manifest: Manifest, images: Path) -> None:
        """Check the sha256 of every image file not hashed before (raise VerificationError), then remember them."""
        verified = self._recorded(manifest.id)
        for name, record in sorted(manifest.files.items()):
            if verified.get(name) == [*identity(images / name), record.sha256]:
                continue  # hashed before, and untouched since
            actual = sha256(images / name)
            if actual != record.sha256:
                raise VerificationError(
                    f"snapshot {manifest.id}: {IMAGES}/{name} is corrupted (sha256 "
                    f"{actual[:16]}…, expected {record.sha256[:16]}…)"
                )
        self.remember(manifest, images)

    def _recorded(self, snapshot_id: str) -> dict[str, builtins.list[object]]:
        """The identities of a snapshot's files when this user last hashed them; empty unless only this user
        could have written the record."""
        try:
            info = self.directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                return {}
            record = json.loads(read_no_follow(self.directory / f"{snapshot_id}.json"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def remember(self, manifest: Manifest, images: Path) -> None:
        """Record the identity of files whose sha256 matched, so unchanged files are not rehashed."""
        verified = {name: [*identity(images / name), record.sha256] for name, record in manifest.files.items()}
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return  # nowhere private to remember: verify in full each time
        write_json(self.directory / f"{manifest.id}.json", verified, mode=0o600)

    def forget(self, snapshot_id: str) -> None:
        """Drop the hashes remembered for a snapshot (gone, or to be hashed in full at its next verify)."""
        with suppress(OSError):
            (self.directory / f"{snapshot_id}.json").unlink(missing_ok=True)

    def forget_missing(self, snapshots_dir: Path, snapshot_name: re.Pattern[str]) -> None:
        """Drop the records of snapshots gone from `snapshots_dir` (only records named as snapkernel names them)."""
        if not self.directory.is_dir() or not snapshots_dir.is_dir():
            return
        for record in self.directory.glob("*.json"):
            if snapshot_name.fullmatch(record.stem) and not (snapshots_dir / record.stem).exists():
                record.unlink(missing_ok=True)
