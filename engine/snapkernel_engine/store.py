"""The snapshot store: publish images atomically, verify, look up, restore, delete, collect."""

from __future__ import annotations

import builtins
import errno
import fcntl
import hashlib
import json
import os
import platform
import pwd
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .checkpoint import dump_tree
from .cuda import CudaDriver
from .errors import SnapshotBusy, SnapshotNotFound, StoreError, VerificationError
from .fingerprint import differences, digest, environment_fingerprint, hardware_fingerprint
from .inputs import held_files_changed, inputs_folder
from .manifest import FileRecord, Manifest
from .restore import DEFAULT_TIMEOUT_S as DEFAULT_RESTORE_TIMEOUT_S
from .restore import RestoredTree, restore_tree
from .version import __version__

VerifyMode = Literal["sha256", "size"]
MANIFEST = "manifest.json"
IMAGES = "images"
LOCK = ".lock"
UNUSABLE = "unusable.json"
STALE = "stale.json"
NEW_PREFIX = ".new-"  # a staging or work dir being created, before its lock is held
NEW_DIR_AGE_S = 3600.0  # a NEW_PREFIX dir this old was left by a process killed while creating it
MAX_ID_CHARS = 255  # NAME_MAX: a snapshot id is the name of its folder
MARKER = ".snapkernel-store"  # says a folder is a store snapkernel made: nothing else is ever tidied or deleted
MARKER_FORMAT = 1
BUILDS = "builds"  # the Jupyter layer's build records and locks

# The names snapkernel gives what it creates, by folder of the store: only these are removed as leftovers,
# and a folder from before the marker is adopted as a store only when it holds nothing else.
_HEX12, _HEX8 = "[0-9a-f]{12}", "[0-9a-f]{8}"
_NEW = rf"\.new-{_HEX12}"
OWN_NAMES = {
    "": re.compile(rf"(snapshots|staging|work|verified|{BUILDS}|{re.escape(MARKER)}(\.{_HEX8})?)"),
    "snapshots": re.compile(_HEX12),
    "staging": re.compile(rf"{_HEX12}\.tmp|{_HEX12}\.deleted-{_HEX8}|{_NEW}"),
    "work": re.compile(rf"{_HEX12}-{_HEX8}|{_NEW}"),
    "verified": re.compile(rf"{_HEX12}\.json(\.{_HEX8})?|[0-9a-f]{{16}}"),
    BUILDS: re.compile(r"([0-9a-f]{64}|queue-[0-9]+)\.(json|lock|tmp)"),
}


@dataclass(frozen=True)
class Mismatch:
    """A snapshot for the right key that cannot be used here, and why."""

    manifest: Manifest
    reasons: list[str]
    unusable: bool = False  # it failed to restore for a reason that would recur: rebuilding the same gives no good


@dataclass(frozen=True)
class CorruptSnapshot:
    """An entry of the snapshots folder that is not a snapshot this store can trust, and why."""

    id: str
    reason: str
    manifest: Manifest | None = None  # what its manifest says, where it could be read


def new_snapshot_id() -> str:
    """A new snapshot's id: 12 random hex digits (a build names it before the dump, so its kernel can show it)."""
    return secrets.token_hex(6)


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _identity(path: Path) -> list[int]:
    """What changes whenever a file's content may have changed (ctime cannot be set back)."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _new_locked_dir(parent: Path, name: str) -> int:
    """Create the private folder parent/name already locked (see _remove_leftovers); return the lock's fd."""
    temporary = parent / f"{NEW_PREFIX}{secrets.token_hex(6)}"
    temporary.mkdir(mode=0o700)
    fd = os.open(temporary, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(temporary, parent / name)
    return fd


def _remove_if_unlocked(path: Path) -> bool:
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


def _manifest_if_readable(directory: Path) -> Manifest | None:
    """The manifest of a snapshot folder that failed its checks, if it can be read at all (to say which key it had)."""
    try:
        return Manifest.from_json(_read_no_follow(directory / MANIFEST))
    except (OSError, ValueError, VerificationError):
        return None


# What to do when the store cannot be written, by errno (the default: check its permissions).
WRITE_ADVICE = {
    errno.EROFS: "the store is on a read-only file system: make it writable, or use a writable store "
    "(SNAPKERNEL_STORE) and list this one as a shared root",
    errno.ENOSPC: "free space in the store (`jupyter snapkernel gc`) or use another store (SNAPKERNEL_STORE)",
    errno.EDQUOT: "free space in the store (`jupyter snapkernel gc`) or use another store (SNAPKERNEL_STORE)",
    errno.ENOTDIR: "the store's path runs through a file: point the store at a folder (SNAPKERNEL_STORE or --store)",
}


def store_write_error(error: OSError, what: str) -> str:
    """One line for a store that could not be written: what failed, why (no errno, no path), and what to do."""
    why = error.strerror or type(error).__name__
    default = "check the store's permissions, or use another store (SNAPKERNEL_STORE)"
    advice = WRITE_ADVICE.get(error.errno or 0, default)
    return f"{what} in the snapshot store ({why}): {advice}"


def _owner_name(uid: int) -> str:
    """A uid with its user name, where it has one."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _read_no_follow(path: Path) -> str:
    """Read a small text file that must not be a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8") as handle:
        return handle.read()


class SnapshotStore:
    """Snapshots on the local disk under `root`: ``snapshots/ID/{manifest.json,images/}``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        verify: VerifyMode = "sha256",
        environment_extra: Mapping[str, str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        shared: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        trusted_owners: Collection[int] | None = None,
    ) -> None:
        self.root = Path(root)
        # Whose files a restore may run: this user and root, unless the caller names others (a shared
        # root's administrators). Whoever else could have written a snapshot could run code as this user.
        self.trusted_owners = frozenset({0, os.geteuid()} if trusted_owners is None else {0, *trusted_owners})
        # A shared store (an admin's course snapshots) publishes snapshots every user can read.
        self.shared = shared
        self.dir_mode, self.file_mode = (0o755, 0o644) if shared else (0o700, 0o600)
        self.verify_mode: VerifyMode = verify
        self.environment_extra = dict(environment_extra or {})
        self.snapshots_dir = self.root / "snapshots"
        self.staging_dir = self.root / "staging"
        # Restores of a read-only (shared) store do their CRIU work elsewhere.
        self.work_dir = Path(work_dir) if work_dir else self.root / "work"
        # The hashes this user has checked, kept out of the snapshot folders (whoever could write
        # those could otherwise vouch for files they changed); a read-only store's go to its reader's.
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "verified"

    # -- layout and permissions -------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create the store's directories (0700, or 0755 where a shared store publishes; owned by this
        user) with the store's marker, or refuse a folder that is another user's or holds other things."""
        self.root.mkdir(mode=self.dir_mode, parents=True, exist_ok=True)
        self.claim()
        for directory in (self.root, self.snapshots_dir, self.staging_dir, self.work_dir, self.cache_dir):
            mode = self.dir_mode if directory in (self.root, self.snapshots_dir) else 0o700
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            info = directory.stat()
            if info.st_uid != os.geteuid():
                raise StoreError(
                    f"the store's folder {directory.name!r} belongs to {_owner_name(info.st_uid)}, not to this "
                    f"user ({os.geteuid()}): choose another store root"
                )
            if info.st_mode & 0o777 != mode:
                os.chmod(directory, mode)

    # -- trust and ownership --------------------------------------------------------------------

    def untrusted_reason(self) -> str | None:
        """Say why this user may not trust this store (None: it may); every restore, build and deletion asks.

        Its folder (and the link to it, if it is one) and its snapshots folder must belong to a trusted
        owner and be writable by no one else: whoever else could write there could run code as this user.
        """
        checks: list[tuple[str, os.stat_result]] = []
        try:
            checks.append(("its folder", self.root.lstat()))
            if stat.S_ISLNK(checks[0][1].st_mode):
                checks.append(("the folder its link points to", self.root.stat()))
            if os.path.lexists(self.snapshots_dir):
                checks.append(("its snapshots folder", self.snapshots_dir.lstat()))
        except FileNotFoundError:
            return None  # nothing there yet: nothing to restore
        except OSError as error:
            return f"its folder cannot be inspected ({error.strerror})"
        for what, info in checks:
            if info.st_uid not in self.trusted_owners:
                owners = " or ".join(_owner_name(uid) for uid in sorted(self.trusted_owners))
                return f"{what} belongs to {_owner_name(info.st_uid)}, not to {owners}"
            if stat.S_ISLNK(info.st_mode):
                if what != "its folder":
                    return f"{what} is a symbolic link"
            elif info.st_mode & 0o022:
                return f"{what} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
        return None

    def is_marked(self) -> bool:
        """Whether the folder holds snapkernel's store marker, of a format this code knows."""
        try:
            record = json.loads(_read_no_follow(self.root / MARKER))
        except (OSError, ValueError):
            return False
        return isinstance(record, dict) and record.get("format") == MARKER_FORMAT

    def not_a_store_reason(self) -> str | None:
        """Say why the folder is not a snapkernel store (None: it is one, is empty, is a store from before the
        marker, or does not exist): it holds entries snapkernel did not make, and no marker."""
        if self.is_marked():
            return None
        if os.path.exists(self.root) and not self.root.is_dir():
            return "the store's path is a file, not a folder: point the store at a new or empty folder"
        foreign: list[str] = []
        for folder, pattern in OWN_NAMES.items():
            try:
                names = os.listdir(self.root / folder)
            except (FileNotFoundError, PermissionError):
                continue
            except NotADirectoryError:
                foreign.append(folder)
                continue
            foreign += [f"{folder}/{name}" if folder else name for name in names if not pattern.fullmatch(name)]
        if not foreign:
            return None
        shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        return (
            f"the store's folder is not a snapkernel store: it holds {shown} and no {MARKER} "
            "marker; point the store at a new or empty folder (SNAPKERNEL_STORE or --store)"
        )

    def claim(self) -> bool:
        """Before anything in the store is changed or removed: check that this user owns it and that it is a
        snapkernel store (adopting an empty folder or a store from before the marker by writing the marker).
        Return False when there is no store at all; raise StoreError for any other folder."""
        if not os.path.lexists(self.root):
            return False
        info = self.root.stat()
        if info.st_uid not in self.trusted_owners:
            raise StoreError(f"the snapshot store is not this user's: {self.untrusted_reason()}")
        problem = self.not_a_store_reason()
        if problem is not None:
            raise StoreError(problem)
        if not self.is_marked():
            self._mark()
        for directory in (self.root, self.snapshots_dir):  # left writable by others: the owner may tighten it
            with suppress(FileNotFoundError):
                loose = directory.lstat()
                if loose.st_uid == os.geteuid() and stat.S_ISDIR(loose.st_mode) and loose.st_mode & 0o022:
                    os.chmod(directory, stat.S_IMODE(loose.st_mode) & ~0o022)
        reason = self.untrusted_reason()
        if reason is not None:
            raise StoreError(f"the snapshot store is not trusted: {reason}")
        return True

    def _mark(self) -> None:
        """Write the store's marker (format version, owner) atomically."""
        temporary = self.root / f"{MARKER}.{secrets.token_hex(4)}"
        record = {"format": MARKER_FORMAT, "owner": os.geteuid(), "created": _utcnow()}
        try:
            with open(temporary, "x", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.chmod(temporary, self.file_mode)
            os.replace(temporary, self.root / MARKER)
        finally:
            temporary.unlink(missing_ok=True)

    def _snapshot_path(self, snapshot_id: str) -> Path:
        if len(snapshot_id) > MAX_ID_CHARS:  # no file can have such a name (ENAMETOOLONG)
            raise SnapshotNotFound(f"invalid snapshot id: longer than {MAX_ID_CHARS} characters")
        if not snapshot_id or not all(c.isalnum() or c in "-_" for c in snapshot_id):
            raise SnapshotNotFound(f"invalid snapshot id {snapshot_id!r}")
        return self.snapshots_dir / snapshot_id

    # -- creating -----------------------------------------------------------------------------

    def take_snapshot(
        self,
        pid: int,
        key: str,
        *,
        labels: Mapping[str, str] | None = None,
        pipes: Mapping[str, int] | None = None,
        leave_running: bool = True,
        criu_binary: str | None = None,
        gpu_state: bool = True,
        cuda_driver: CudaDriver | None = None,
        inputs: Mapping[str, Any] | None = None,
        replace: bool = True,
        snapshot_id: str | None = None,
    ) -> Manifest:
        """Dump the tree rooted at `pid` and publish it atomically as `snapshot_id` (default: a new id);
        nothing is left on failure.

        `inputs` records what the process read from outside (snapkernel_engine.inputs.fingerprint_inputs).
        With `replace`, older snapshots of the same key on this hardware are deleted once this one
        is published (those being restored at that moment finish first and go at the next gc).
        """
        self.ensure_layout()
        snapshot_id = snapshot_id or new_snapshot_id()
        staging = self.staging_dir / f"{snapshot_id}.tmp"
        # Locked while this process lives: a build killed mid-dump leaves a folder the next gc removes.
        staging_lock = _new_locked_dir(self.staging_dir, staging.name)
        try:
            images = staging / IMAGES
            result = dump_tree(
                pid,
                images,
                staging,
                pipes=pipes,
                leave_running=leave_running,
                criu_binary=criu_binary,
                gpu_state=gpu_state,
                cuda_driver=cuda_driver,
            )
            files = self._seal(staging, images)
            manifest = Manifest(
                id=snapshot_id,
                key=key,
                created=_utcnow(),
                size_bytes=sum(record.size for record in files.values()),
                rss_bytes=result.rss_bytes,
                dump_duration_s=round(result.duration_s, 3),
                pid=pid,
                versions={
                    "criu": result.criu_version,
                    "python": platform.python_version(),
                    "engine": __version__,
                },
                environment=environment_fingerprint(self.environment_extra),
                hardware=hardware_fingerprint(),
                files=files,
                pipes=result.pipes,
                labels=dict(labels or {}),
                cuda_pids=result.cuda_pids,
                inputs=dict(inputs or {}),
                held_files=result.held_files,
            )
            manifest_path = staging / MANIFEST
            with open(manifest_path, "x") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(manifest_path, self.file_mode)
            (staging / LOCK).touch(mode=self.file_mode)
            self._remember_verified(snapshot_id, images, manifest)
            _fsync_path(staging)
            os.rename(staging, self.snapshots_dir / snapshot_id)
            _fsync_path(self.snapshots_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.forget_verified(snapshot_id)
            raise
        finally:
            os.close(staging_lock)
        if replace:
            for older in self.replaced(self.list()):
                if older.key == key:
                    self._try_delete(older.id)  # one being restored now is left to a later gc
        return manifest

    def _seal(self, staging: Path, images: Path) -> dict[str, FileRecord]:
        """Make everything CRIU wrote read-only to others (private unless shared); fsync and hash the images."""
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, self.dir_mode if path.is_dir() else self.file_mode)
        files: dict[str, FileRecord] = {}
        for path in sorted(images.iterdir()):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
                digest = hashlib.file_digest(handle, "sha256").hexdigest()
            files[path.name] = FileRecord(size=path.stat().st_size, sha256=digest)
        _fsync_path(images)
        return files

    # -- reading ------------------------------------------------------------------------------

    def get(self, snapshot_id: str) -> Manifest:
        """Return the manifest of one snapshot, once its folder is trusted and its image files all present."""
        return self._load(self._snapshot_path(snapshot_id))

    def _load(self, directory: Path) -> Manifest:
        """Read and check a snapshot folder: raise SnapshotNotFound, or VerificationError naming the fault."""
        snapshot_id = directory.name
        try:
            info = directory.lstat()
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r}") from None
        if stat.S_ISLNK(info.st_mode):
            raise VerificationError(f"snapshot {snapshot_id}: a symbolic link, not a snapshot folder")
        if not stat.S_ISDIR(info.st_mode):
            raise VerificationError(f"snapshot {snapshot_id}: a stray file, not a snapshot folder")
        untrusted = self._untrusted(directory)
        if untrusted:
            raise VerificationError(f"snapshot {snapshot_id}: not trusted: {untrusted}")
        try:
            text = _read_no_follow(directory / MANIFEST)
        except FileNotFoundError:
            if not directory.exists():  # deleted while we looked
                raise SnapshotNotFound(f"no snapshot {snapshot_id!r}") from None
            raise VerificationError(f"snapshot {snapshot_id}: no {MANIFEST}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise VerificationError(f"snapshot {snapshot_id}: cannot read {MANIFEST} ({error})") from None
        manifest = Manifest.from_json(text, origin=f"snapshot {snapshot_id}: {MANIFEST}")
        if manifest.id != snapshot_id:
            raise VerificationError(f"snapshot {snapshot_id}: manifest names another snapshot ({manifest.id})")
        if not (directory / LOCK).is_file():
            raise VerificationError(f"snapshot {snapshot_id}: no {LOCK} file")
        self._check_files(directory / IMAGES, manifest)
        return manifest

    def _untrusted(self, directory: Path) -> str | None:
        """Say why a snapshot folder could have been changed by someone this user does not trust."""
        reason = self.untrusted_reason()
        if reason is not None:
            return f"the store is not trusted: {reason}"
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
            name = str(path.relative_to(self.root))
            if stat.S_ISLNK(info.st_mode):
                return f"{name} is a symbolic link"
            if info.st_uid not in self.trusted_owners:
                owners = " or ".join(_owner_name(uid) for uid in sorted(self.trusted_owners))
                return f"{name} belongs to {_owner_name(info.st_uid)}, not to {owners}"
            if info.st_mode & 0o022:
                return f"{name} is writable by others (mode {stat.S_IMODE(info.st_mode):o})"
        return None

    def _check_files(self, images: Path, manifest: Manifest) -> None:
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

    def listing(self) -> tuple[builtins.list[Manifest], builtins.list[CorruptSnapshot]]:
        """`scan`, for showing to people: refused (StoreError) in a folder that is not a snapkernel store, whose
        entries are someone's own files, not corrupt snapshots."""
        problem = self.not_a_store_reason()
        if problem is not None:
            raise StoreError(problem)
        return self.scan()

    def scan(self) -> tuple[list[Manifest], list[CorruptSnapshot]]:
        """Return the usable snapshots (oldest first) and every other entry of the snapshots folder, with why."""
        manifests: list[Manifest] = []
        corrupt: list[CorruptSnapshot] = []
        try:
            entries = sorted(self.snapshots_dir.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        for entry in entries:
            try:
                manifests.append(self.get(entry.name))
            except SnapshotNotFound as error:
                if entry.exists() or entry.is_symlink():  # not a valid snapshot name
                    corrupt.append(CorruptSnapshot(entry.name, str(error)))
            except VerificationError as error:
                reason = str(error).removeprefix(f"snapshot {entry.name}: ")
                corrupt.append(CorruptSnapshot(entry.name, reason, _manifest_if_readable(entry)))
        return sorted(manifests, key=lambda manifest: manifest.created), corrupt

    def list(self) -> list[Manifest]:
        """Return every usable snapshot, oldest first (corrupt() has the rest)."""
        return self.scan()[0]

    def corrupt(self) -> builtins.list[CorruptSnapshot]:
        """Return the entries of the snapshots folder that are not snapshots this store can use, with why."""
        return self.scan()[1]

    def fingerprint_digest(self) -> str:
        """One hash of this environment and hardware: what a snapshot built now would be keyed on besides its key."""
        return digest([environment_fingerprint(self.environment_extra), hardware_fingerprint()])

    def mismatches(self, manifest: Manifest) -> builtins.list[str]:
        """Say why a snapshot cannot be restored in this environment on this hardware, or with the files it held."""
        marked = self._marked_reason(manifest.id, STALE)
        reasons = [marked] if marked is not None else []
        changed = differences(manifest.environment, environment_fingerprint(self.environment_extra))
        if changed:
            reasons.append(f"Python environment changed ({', '.join(changed)})")
        changed = differences(manifest.hardware, hardware_fingerprint())
        if changed:
            reasons.append(f"hardware changed ({', '.join(changed)})")
        return reasons + held_files_changed(manifest.held_files)

    def newest_usable(
        self, key: str, changes: Callable[[Manifest], builtins.list[str]] | None = None
    ) -> Manifest | None:
        """Return the newest snapshot for `key` that matches this environment and hardware (and `changes` finds
        nothing against, as in usable_and_stale)."""
        usable, _ = self.usable_and_stale(key, changes)
        return usable

    def usable_and_stale(
        self, key: str, changes: Callable[[Manifest], builtins.list[str]] | None = None
    ) -> tuple[Manifest | None, builtins.list[Mismatch]]:
        """Return the newest usable snapshot for `key` and the stale (then corrupt) ones with their reasons.

        `changes` says what else makes a snapshot stale for the caller (its inputs, seen from its notebook)."""
        stale: list[Mismatch] = []
        manifests, corrupt = self.scan()
        usable = None
        for manifest in reversed(manifests):
            if manifest.key != key:
                continue
            failure = self.unusable_reason(manifest.id)
            if failure is not None:
                stale.append(Mismatch(manifest, [f"snapshot {manifest.id} cannot be restored: {failure}"], True))
                continue
            reasons = self.mismatches(manifest)
            if not reasons and changes is not None:
                reasons = changes(manifest)
            if not reasons:
                usable = manifest
                break
            stale.append(Mismatch(manifest, reasons))
        for entry in corrupt:
            if entry.manifest is not None and entry.manifest.key == key:
                stale.append(Mismatch(entry.manifest, [f"snapshot {entry.id} is corrupt: {entry.reason}"]))
        return usable, stale

    def mark_unusable(self, snapshot_id: str, reason: str) -> None:
        """Record that a snapshot failed to restore for a reason that would recur (a no-op in a read-only store)."""
        self._write_json(self._snapshot_path(snapshot_id) / UNUSABLE, {"reason": reason, "when": _utcnow()})

    def mark_stale(self, snapshot_id: str, reason: str) -> None:
        """Record that a snapshot failed to restore because something it depends on changed: a rebuild fixes it."""
        self._write_json(self._snapshot_path(snapshot_id) / STALE, {"reason": reason, "when": _utcnow()})

    def unusable_reason(self, snapshot_id: str) -> str | None:
        """Why a snapshot was found unusable, or None."""
        return self._marked_reason(snapshot_id, UNUSABLE)

    def _marked_reason(self, snapshot_id: str, mark: str) -> str | None:
        """The reason recorded in a snapshot's mark file (UNUSABLE or STALE), or None."""
        try:
            return str(json.loads((self._snapshot_path(snapshot_id) / mark).read_text())["reason"])
        except (OSError, ValueError, KeyError, TypeError, SnapshotNotFound):
            return None

    def verify(self, snapshot_id: str, *, key: str | None = None, mode: VerifyMode | None = None) -> Manifest:
        """Check a snapshot's folder, key and image files against its manifest; raise on any problem."""
        mode = mode or self.verify_mode
        manifest = self.get(snapshot_id)
        if key is not None and manifest.key != key:
            raise VerificationError(
                f"snapshot {snapshot_id}: manifest key {manifest.key!r} does not match the requested key {key!r}"
            )
        if mode == "sha256":
            images = self._snapshot_path(snapshot_id) / IMAGES
            verified = self._verified(snapshot_id)
            for name, record in sorted(manifest.files.items()):
                if verified.get(name) == [*_identity(images / name), record.sha256]:
                    continue  # hashed before, and untouched since
                actual = _sha256(images / name)
                if actual != record.sha256:
                    raise VerificationError(
                        f"snapshot {snapshot_id}: {IMAGES}/{name} is corrupted (sha256 "
                        f"{actual[:16]}…, expected {record.sha256[:16]}…)"
                    )
            self._remember_verified(snapshot_id, images, manifest)
        return manifest

    def _verified(self, snapshot_id: str) -> dict[str, builtins.list[object]]:
        """The identities of a snapshot's files when this user last hashed them; empty unless only this user
        could have written the record."""
        try:
            info = self.cache_dir.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
                return {}
            record = json.loads(_read_no_follow(self.cache_dir / f"{snapshot_id}.json"))
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _remember_verified(self, snapshot_id: str, images: Path, manifest: Manifest) -> None:
        """Record the identity of files whose sha256 matched, so unchanged files are not rehashed."""
        verified = {name: [*_identity(images / name), record.sha256] for name, record in manifest.files.items()}
        try:
            self.cache_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            return  # nowhere private to remember: verify in full each time
        self._write_json(self.cache_dir / f"{snapshot_id}.json", verified, mode=0o600)

    def forget_verified(self, snapshot_id: str) -> None:
        """Drop the hashes remembered for a snapshot (gone, or to be hashed in full at its next verify)."""
        with suppress(OSError):
            (self.cache_dir / f"{snapshot_id}.json").unlink(missing_ok=True)

    def _write_json(self, path: Path, data: object, mode: int | None = None) -> None:
        """Replace a small JSON file of the store atomically; a no-op where the store is read-only."""
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        try:
            temporary.write_text(json.dumps(data))
            os.chmod(temporary, self.file_mode if mode is None else mode)
            os.replace(temporary, path)
        except OSError:
            with suppress(OSError):  # a read-only file system refuses even to unlink what is not there
                temporary.unlink(missing_ok=True)

    # -- restoring ----------------------------------------------------------------------------

    def _lock(self, snapshot_id: str, exclusive: bool) -> tuple[int, Path]:
        """Take the snapshot's lock (shared while restoring, exclusive while deleting): (fd, dir)."""
        directory = self._snapshot_path(snapshot_id)
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
        return fd, directory

    @contextmanager
    def _locked(self, snapshot_id: str, exclusive: bool) -> Iterator[Path]:
        """Hold the snapshot's lock for the duration of a block."""
        fd, directory = self._lock(snapshot_id, exclusive)
        try:
            yield directory
        finally:
            os.close(fd)

    def restore_snapshot(
        self,
        snapshot_id: str,
        *,
        key: str | None = None,
        pipes: Mapping[str, int] | None = None,
        verify: VerifyMode | None = None,
        criu_binary: str | None = None,
        timeout: float | None = None,
        lazy: bool = False,
        cuda_driver: CudaDriver | None = None,
        own_network: bool = False,
        stopped: bool = False,
    ) -> RestoredTree:
        """Verify a snapshot, then restore it; `pipes` maps pipe names given at dump to new fds.
        With `stopped` the tree stays stopped until ``tree.resume()``.

        The snapshot counts as being restored (gc and delete leave it alone) until the restored
        tree's memory is all in place, which for a `lazy` restore is after this returns.
        """
        lock_fd, directory = self._lock(snapshot_id, exclusive=False)
        work = self.work_dir / f"{snapshot_id}-{secrets.token_hex(4)}"
        held = [lock_fd]

        def release() -> None:
            shutil.rmtree(work, ignore_errors=True)
            for fd in held:
                os.close(fd)

        try:
            manifest = self.verify(snapshot_id, key=key, mode=verify)
            unknown = sorted(set(pipes or {}) - manifest.pipes.keys())
            if unknown:
                raise VerificationError(
                    f"snapshot {snapshot_id} has no pipe named {', '.join(unknown)} "
                    f"(it has: {', '.join(sorted(manifest.pipes)) or 'none'})"
                )
            inherit = {manifest.pipes[name]: fd for name, fd in (pipes or {}).items()}
            try:
                self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                # Locked while this restore needs it: the folder of a restore whose server was killed is a leftover.
                held.append(_new_locked_dir(self.work_dir, work.name))
            except OSError as error:
                raise StoreError(store_write_error(error, "a restore cannot create its work folder")) from None
            tree = restore_tree(
                directory / IMAGES,
                work,
                inherit_fds=inherit,
                criu_binary=criu_binary,
                timeout=DEFAULT_RESTORE_TIMEOUT_S if timeout is None else timeout,
                lazy=lazy,
                cuda_pids=manifest.cuda_pids,
                cuda_driver=cuda_driver,
                own_network=own_network,
                stopped=stopped,
            )
        except BaseException:
            release()
            raise
        with suppress(OSError):
            os.utime(directory / LOCK)
        if tree.pages_loaded.is_set():
            release()
        else:

            def release_when_loaded() -> None:
                """Release the snapshot once the lazily restored tree's memory is all in place."""
                tree.pages_loaded.wait()
                release()

            threading.Thread(target=release_when_loaded, daemon=True).start()
        return tree

    # -- removing -----------------------------------------------------------------------------

    def delete(self, snapshot_id: str) -> None:
        """Delete a snapshot; refuse while it is being restored, and in a folder that is not this user's store."""
        self._snapshot_path(snapshot_id)  # an invalid id is not found, whatever the folder holds
        if not self.claim():
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r}")
        with self._locked(snapshot_id, exclusive=True) as directory:
            self._remove_entry(directory)

    def _remove_entry(self, entry: Path) -> None:
        """Take an entry out of the snapshots folder at once, then remove it (a symbolic link, not its target)."""
        doomed = self.staging_dir / f"{entry.name}.deleted-{secrets.token_hex(4)}"
        os.rename(entry, doomed)  # lookups stop seeing it here, however long the removal takes
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            doomed.unlink(missing_ok=True)
        self.forget_verified(entry.name)

    def last_used(self, manifest: Manifest) -> float:
        """Return when a snapshot was last restored (or created), as a timestamp."""
        try:
            return (self._snapshot_path(manifest.id) / LOCK).stat().st_mtime
        except OSError:
            return datetime.fromisoformat(manifest.created).timestamp()

    def total_size(self) -> int:
        """Return the summed image size of every snapshot."""
        return sum(manifest.size_bytes for manifest in self.list())

    def replaced(self, manifests: builtins.list[Manifest]) -> builtins.list[Manifest]:
        """Those of `manifests` (oldest first) that a newer one of the same key on the same hardware replaces.

        Snapshots whose setup read files relative to their notebook's folder replace only those of the same
        folder: the same cells in two folders with their own data keep a snapshot each."""
        newest: dict[tuple[str, str, str | None], Manifest] = {}
        for manifest in manifests:
            newest[(manifest.key, digest(manifest.hardware), inputs_folder(manifest.inputs))] = manifest
        kept = {manifest.id for manifest in newest.values()}
        return [manifest for manifest in manifests if manifest.id not in kept]

    def clean_up(self, *, max_age_s: float | None = None, quota_bytes: int | None = None) -> builtins.list[str]:
        """Remove what is not a usable snapshot (corrupt entries, replaced snapshots, leftovers of dead builds
        and restores), then snapshots unused for `max_age_s`, then the least recently used over the quota."""
        if not self.claim():
            return []
        now = time.time()
        self._remove_leftovers(now)
        manifests, corrupt = self.scan()
        deleted: list[str] = []
        for entry in corrupt:
            with suppress(OSError):
                self._remove_entry(self.snapshots_dir / entry.id)
                deleted.append(entry.id)
        replaced = {manifest.id for manifest in self.replaced(manifests) if self._try_delete(manifest.id)}
        deleted += sorted(replaced)
        by_use = sorted((manifest for manifest in manifests if manifest.id not in replaced), key=self.last_used)
        kept = []
        for manifest in by_use:
            if max_age_s is not None and now - self.last_used(manifest) > max_age_s and self._try_delete(manifest.id):
                deleted.append(manifest.id)
            else:
                kept.append(manifest)
        if quota_bytes is not None:
            total = sum(manifest.size_bytes for manifest in kept)
            for manifest in kept:
                if total <= quota_bytes:
                    break
                if self._try_delete(manifest.id):
                    deleted.append(manifest.id)
                    total -= manifest.size_bytes
        return deleted

    def enforce_limits(self, *, quota_bytes: int = 0, max_snapshots: int = 0) -> builtins.list[str]:
        """Delete the least recently used snapshots beyond a size quota and a count (0: no limit)."""
        deleted = self.clean_up(quota_bytes=quota_bytes) if quota_bytes else []
        if max_snapshots:
            kept = sorted(self.list(), key=self.last_used)
            for manifest in kept[: max(len(kept) - max_snapshots, 0)]:
                if self._try_delete(manifest.id):
                    deleted.append(manifest.id)
        return deleted

    def _try_delete(self, snapshot_id: str) -> bool:
        try:
            self.delete(snapshot_id)
        except (SnapshotBusy, SnapshotNotFound):
            return False
        return True

    def _remove_leftovers(self, now: float) -> None:
        """Remove what dead builds, restores and deletions left in staging/ and work/, and forgotten hashes
        (only entries named as snapkernel names them)."""
        for parent, folder in ((self.staging_dir, "staging"), (self.work_dir, "work")):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if not OWN_NAMES[folder].fullmatch(entry.name):
                    continue
                with suppress(OSError):
                    if not entry.name.startswith(NEW_PREFIX):
                        _remove_if_unlocked(entry)  # a live build or restore holds its folder's lock
                    elif now - entry.lstat().st_mtime > NEW_DIR_AGE_S:
                        shutil.rmtree(entry, ignore_errors=True)
        if self.cache_dir.is_dir() and self.snapshots_dir.is_dir():
            for record in self.cache_dir.glob("*.json"):
                if OWN_NAMES["snapshots"].fullmatch(record.stem) and not (self.snapshots_dir / record.stem).exists():
                    record.unlink(missing_ok=True)
