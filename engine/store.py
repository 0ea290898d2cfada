"""The snapshot store: publish images atomically, verify, look up, restore, delete, collect."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import secrets
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .checkpoint import checkpoint
from .cuda import CudaDriver
from .errors import SnapshotBusy, SnapshotNotFound, StoreError, VerificationError
from .fingerprint import differences, digest, environment_fingerprint, hardware_fingerprint
from .manifest import FileRecord, Manifest
from .restore import RestoredTree, restore
from .version import __version__

VerifyMode = Literal["sha256", "size"]
MANIFEST = "manifest.json"
IMAGES = "images"
LOCK = ".lock"
VERIFIED = "verified.json"
UNUSABLE = "unusable.json"
LEFTOVER_AGE_S = 3600.0  # staging and work dirs older than this belong to crashed operations


@dataclass(frozen=True)
class Mismatch:
    """A snapshot for the right key that cannot be used here, and why."""

    manifest: Manifest
    reasons: list[str]
    unusable: bool = False  # it failed to restore for a reason that would recur: rebuilding the same gives no good


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


class SnapshotStore:
    """Snapshots on the local disk under `root`: ``snapshots/ID/{manifest.json,images/}``."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        verify: VerifyMode = "sha256",
        environment_extra: Mapping[str, str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        shared: bool = False,
    ) -> None:
        self.root = Path(root)
        # A shared store (an admin's course snapshots) publishes snapshots every user can read.
        self.shared = shared
        self.dir_mode, self.file_mode = (0o755, 0o644) if shared else (0o700, 0o600)
        self.verify_mode: VerifyMode = verify
        self.environment_extra = dict(environment_extra or {})
        self.snapshots_dir = self.root / "snapshots"
        self.staging_dir = self.root / "staging"
        # Restores of a read-only (shared) store do their CRIU work elsewhere.
        self.work_dir = Path(work_dir) if work_dir else self.root / "work"

    # -- layout and permissions -------------------------------------------------------------

    def ensure_layout(self) -> None:
        """Create the store's directories (0700, or 0755 where a shared store publishes; owned by this
        user) or refuse unsafe ones."""
        for directory in (self.root, self.snapshots_dir, self.staging_dir, self.work_dir):
            mode = self.dir_mode if directory in (self.root, self.snapshots_dir) else 0o700
            directory.mkdir(mode=mode, parents=True, exist_ok=True)
            info = directory.stat()
            if info.st_uid != os.geteuid():
                raise StoreError(
                    f"{directory} belongs to uid {info.st_uid}, not to this user ({os.geteuid()}): "
                    "choose another store root"
                )
            if info.st_mode & 0o777 != mode:
                os.chmod(directory, mode)

    def _snapshot_path(self, snapshot_id: str) -> Path:
        if not snapshot_id or not all(c.isalnum() or c in "-_" for c in snapshot_id):
            raise SnapshotNotFound(f"invalid snapshot id {snapshot_id!r}")
        return self.snapshots_dir / snapshot_id

    # -- creating -----------------------------------------------------------------------------

    def checkpoint(
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
    ) -> Manifest:
        """Dump the tree rooted at `pid` and publish it atomically; nothing is left on failure.

        `inputs` records what the process read from outside (engine.inputs.fingerprint_inputs).
        """
        self.ensure_layout()
        snapshot_id = secrets.token_hex(6)
        staging = self.staging_dir / f"{snapshot_id}.tmp"
        staging.mkdir(mode=0o700)
        try:
            images = staging / IMAGES
            result = checkpoint(
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
            )
            manifest_path = staging / MANIFEST
            with open(manifest_path, "x") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(manifest_path, self.file_mode)
            (staging / LOCK).touch(mode=self.file_mode)
            self._remember_verified(staging, manifest)
            _fsync_path(staging)
            os.rename(staging, self.snapshots_dir / snapshot_id)
            _fsync_path(self.snapshots_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
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
        """Return the manifest of one snapshot."""
        path = self._snapshot_path(snapshot_id) / MANIFEST
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.snapshots_dir}") from None
        return Manifest.from_json(text, origin=f"snapshot {snapshot_id}: {MANIFEST}")

    def list(self) -> list[Manifest]:
        """Return every readable snapshot, oldest first."""
        manifests = []
        if self.snapshots_dir.is_dir():
            for entry in self.snapshots_dir.iterdir():
                with suppress(SnapshotNotFound, VerificationError):
                    manifests.append(self.get(entry.name))
        return sorted(manifests, key=lambda manifest: manifest.created)

    def fingerprint_digest(self) -> str:
        """One hash of this environment and hardware: what a snapshot built now would be keyed on besides its key."""
        return digest([environment_fingerprint(self.environment_extra), hardware_fingerprint()])

    def mismatches(self, manifest: Manifest) -> list[str]:
        """Say why a snapshot cannot be restored in this environment on this hardware."""
        reasons = []
        changed = differences(manifest.environment, environment_fingerprint(self.environment_extra))
        if changed:
            reasons.append(f"Python environment changed ({', '.join(changed)})")
        changed = differences(manifest.hardware, hardware_fingerprint())
        if changed:
            reasons.append(f"hardware changed ({', '.join(changed)})")
        return reasons

    def find(self, key: str) -> Manifest | None:
        """Return the newest snapshot for `key` that matches this environment and hardware."""
        usable, _ = self.lookup(key)
        return usable

    def lookup(self, key: str) -> tuple[Manifest | None, list[Mismatch]]:
        """Return the newest usable snapshot for `key` and the stale ones with their reasons."""
        stale: list[Mismatch] = []
        for manifest in reversed(self.list()):
            if manifest.key != key:
                continue
            failure = self.unusable_reason(manifest.id)
            if failure is not None:
                stale.append(Mismatch(manifest, [f"snapshot {manifest.id} cannot be restored: {failure}"], True))
                continue
            reasons = self.mismatches(manifest)
            if not reasons:
                return manifest, stale
            stale.append(Mismatch(manifest, reasons))
        return None, stale

    def mark_unusable(self, snapshot_id: str, reason: str) -> None:
        """Record that a snapshot failed to restore for a reason that would recur (a no-op in a read-only store)."""
        self._write_json(self._snapshot_path(snapshot_id) / UNUSABLE, {"reason": reason, "when": _utcnow()})

    def unusable_reason(self, snapshot_id: str) -> str | None:
        """Why a snapshot was found unusable, or None."""
        try:
            return str(json.loads((self._snapshot_path(snapshot_id) / UNUSABLE).read_text())["reason"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def verify(self, snapshot_id: str, *, key: str | None = None, mode: VerifyMode | None = None) -> Manifest:
        """Check a snapshot's key and image files against its manifest; raise on any problem."""
        mode = mode or self.verify_mode
        manifest = self.get(snapshot_id)
        if manifest.id != snapshot_id:
            raise VerificationError(f"snapshot {snapshot_id}: manifest names another snapshot ({manifest.id})")
        if key is not None and manifest.key != key:
            raise VerificationError(
                f"snapshot {snapshot_id}: manifest key {manifest.key!r} does not match the requested key {key!r}"
            )
        images = self._snapshot_path(snapshot_id) / IMAGES
        present = {path.name for path in images.iterdir()} if images.is_dir() else set()
        for name in sorted(present - manifest.files.keys()):
            raise VerificationError(f"snapshot {snapshot_id}: unexpected file {IMAGES}/{name}")
        for name, record in sorted(manifest.files.items()):
            path = images / name
            if name not in present:
                raise VerificationError(f"snapshot {snapshot_id}: missing file {IMAGES}/{name}")
            size = path.stat().st_size
            if size != record.size:
                raise VerificationError(
                    f"snapshot {snapshot_id}: {IMAGES}/{name} has {size} bytes, expected "
                    f"{record.size} ({'truncated' if size < record.size else 'grown'})"
                )
        if mode == "sha256":
            directory = self._snapshot_path(snapshot_id)
            verified = self._verified(directory)
            for name, record in sorted(manifest.files.items()):
                if verified.get(name) == [*_identity(images / name), record.sha256]:
                    continue  # hashed before, and untouched since
                actual = _sha256(images / name)
                if actual != record.sha256:
                    raise VerificationError(
                        f"snapshot {snapshot_id}: {IMAGES}/{name} is corrupted (sha256 "
                        f"{actual[:16]}…, expected {record.sha256[:16]}…)"
                    )
            self._remember_verified(directory, manifest)
        return manifest

    @staticmethod
    def _verified(directory: Path) -> dict[str, list[object]]:
        try:
            return json.loads((directory / VERIFIED).read_text())
        except (OSError, ValueError):
            return {}

    def _remember_verified(self, directory: Path, manifest: Manifest) -> None:
        """Record the identity of files whose sha256 matched, so unchanged files are not rehashed."""
        images = directory / IMAGES
        verified = {name: [*_identity(images / name), record.sha256] for name, record in manifest.files.items()}
        self._write_json(directory / VERIFIED, verified)  # a read-only (shared) store: verify in full each time

    def _write_json(self, path: Path, data: object) -> None:
        """Replace a small JSON file beside a snapshot atomically; a no-op where the store is read-only."""
        temporary = path.with_name(f"{path.name}.{secrets.token_hex(4)}")
        try:
            temporary.write_text(json.dumps(data))
            os.chmod(temporary, self.file_mode)
            os.replace(temporary, path)
        except OSError:
            temporary.unlink(missing_ok=True)

    # -- restoring ----------------------------------------------------------------------------

    def _lock(self, snapshot_id: str, exclusive: bool) -> tuple[int, Path]:
        """Take the snapshot's lock (shared while restoring, exclusive while deleting): (fd, dir)."""
        directory = self._snapshot_path(snapshot_id)
        try:
            fd = os.open(directory / LOCK, os.O_RDONLY)
        except FileNotFoundError:
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r} in {self.snapshots_dir}") from None
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

    def restore(
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
    ) -> RestoredTree:
        """Verify a snapshot, then restore it; `pipes` maps pipe names given at dump to new fds.

        The snapshot counts as being restored (gc and delete leave it alone) until the restored
        tree's memory is all in place, which for a `lazy` restore is after this returns.
        """
        lock_fd, directory = self._lock(snapshot_id, exclusive=False)
        work = self.work_dir / f"{snapshot_id}-{secrets.token_hex(4)}"

        def release() -> None:
            shutil.rmtree(work, ignore_errors=True)
            os.close(lock_fd)

        try:
            manifest = self.verify(snapshot_id, key=key, mode=verify)
            unknown = sorted(set(pipes or {}) - manifest.pipes.keys())
            if unknown:
                raise VerificationError(
                    f"snapshot {snapshot_id} has no pipe named {', '.join(unknown)} "
                    f"(it has: {', '.join(sorted(manifest.pipes)) or 'none'})"
                )
            inherit = {manifest.pipes[name]: fd for name, fd in (pipes or {}).items()}
            self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            options = {} if timeout is None else {"timeout": timeout}
            tree = restore(
                directory / IMAGES,
                work,
                inherit_fds=inherit,
                criu_binary=criu_binary,
                lazy=lazy,
                cuda_pids=manifest.cuda_pids,
                cuda_driver=cuda_driver,
                own_network=own_network,
                **options,
            )
        except BaseException:
            release()
            raise
        with suppress(OSError):
            os.utime(directory / LOCK)
        if tree.pages_loaded.is_set():
            release()
        else:
            threading.Thread(target=lambda: (tree.pages_loaded.wait(), release()), daemon=True).start()
        return tree

    # -- removing -----------------------------------------------------------------------------

    def delete(self, snapshot_id: str) -> None:
        """Delete a snapshot; refuse while it is being restored."""
        with self._locked(snapshot_id, exclusive=True) as directory:
            doomed = self.staging_dir / f"{snapshot_id}.deleted-{secrets.token_hex(4)}"
            os.rename(directory, doomed)
        shutil.rmtree(doomed, ignore_errors=True)

    def last_used(self, manifest: Manifest) -> float:
        """Return when a snapshot was last restored (or created), as a timestamp."""
        try:
            return (self._snapshot_path(manifest.id) / LOCK).stat().st_mtime
        except OSError:
            return datetime.fromisoformat(manifest.created).timestamp()

    def total_size(self) -> int:
        """Return the summed image size of every snapshot."""
        return sum(manifest.size_bytes for manifest in self.list())

    def gc(self, *, max_age_s: float | None = None, quota_bytes: int | None = None) -> list[str]:
        """Delete snapshots unused for `max_age_s`, then the least recently used over the quota."""
        now = time.time()
        self._remove_leftovers(now)
        deleted: list[str] = []
        by_use = sorted(self.list(), key=self.last_used)
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

    def trim(self, *, quota_bytes: int = 0, max_snapshots: int = 0) -> list[str]:
        """Delete the least recently used snapshots beyond a size quota and a count (0: no limit)."""
        deleted = self.gc(quota_bytes=quota_bytes) if quota_bytes else []
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
        for parent in (self.staging_dir, self.work_dir):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                with suppress(OSError):
                    if now - entry.stat().st_mtime > LEFTOVER_AGE_S:
                        shutil.rmtree(entry, ignore_errors=True)
