"""The store's folder: what its folders and files are called, its marker, and who may trust or change it."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Collection
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from .errors import SnapshotNotFound, StoreError
from .integrity import owner_name, read_no_follow, untrusted_store_reason

MANIFEST = "manifest.json"
UNUSABLE = "unusable.json"
STALE = "stale.json"
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
    BUILDS: re.compile(r"([0-9a-f]{64}|queue-[0-9]+|pulls)\.(json|lock|tmp|fetch|log)"),
}

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


def utcnow() -> str:
    """The time now, as the store records it."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


class StoreFolder:
    """A store's folder: its layout, its marker, and whether this user may trust it and change it."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        work_dir: str | os.PathLike[str] | None,
        cache_dir: str | os.PathLike[str] | None,
        shared: bool,
        trusted_owners: Collection[int] | None,
    ) -> None:
        self.root = Path(root)
        # Whose files a restore may run: this user and root, unless the caller names others (a shared
        # root's administrators). Whoever else could have written a snapshot could run code as this user.
        self.trusted_owners = frozenset({0, os.geteuid()} if trusted_owners is None else {0, *trusted_owners})
        # A shared store (an admin's course snapshots) publishes snapshots every user can read.
        self.shared = shared
        self.dir_mode, self.file_mode = (0o755, 0o644) if shared else (0o700, 0o600)
        self.snapshots_dir = self.root / "snapshots"
        self.staging_dir = self.root / "staging"
        # Restores of a read-only (shared) store do their CRIU work elsewhere.
        self.work_dir = Path(work_dir) if work_dir else self.root / "work"
        # The hashes this user has checked (integrity.VerifiedCache); a read-only store's go to its reader's.
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / "verified"

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
                    f"the store's folder {directory.name!r} belongs to {owner_name(info.st_uid)}, not to this "
                    f"user ({os.geteuid()}): choose another store root"
                )
            if info.st_mode & 0o777 != mode:
                os.chmod(directory, mode)

    def untrusted_reason(self) -> str | None:
        """Say why this user may not trust this store (None: it may); every restore, build and deletion asks."""
        return untrusted_store_reason(self.root, self.snapshots_dir, self.trusted_owners)

    def is_marked(self) -> bool:
        """Whether the folder holds snapkernel's store marker, of a format this code knows."""
        try:
            record = json.loads(read_no_follow(self.root / MARKER))
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
        record = {"format": MARKER_FORMAT, "owner": os.geteuid(), "created": utcnow()}
        try:
            with open(temporary, "x", encoding="utf-8") as handle:
                json.dump(record, handle)
            os.chmod(temporary, self.file_mode)
            os.replace(temporary, self.root / MARKER)
        finally:
            temporary.unlink(missing_ok=True)

    def _snapshot_path(self, snapshot_id: str) -> Path:
        """The folder of a snapshot; SnapshotNotFound for an id no snapshot can have."""
        if len(snapshot_id) > MAX_ID_CHARS:  # no file can have such a name (ENAMETOOLONG)
            raise SnapshotNotFound(f"invalid snapshot id: longer than {MAX_ID_CHARS} characters")
        if not snapshot_id or not all(c.isalnum() or c in "-_" for c in snapshot_id):
            raise SnapshotNotFound(f"invalid snapshot id {snapshot_id!r}")
        return self.snapshots_dir / snapshot_id
