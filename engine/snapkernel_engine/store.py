"""The snapshot store: publish images atomically, read and look them up, restore and delete them.

Its other jobs have a module each: `layout` (the folder, its marker, trust in it), `integrity` (hashes, the
verified cache, trust in a snapshot's files), `locks` (a snapshot's flock) and `retention` (the clean-up).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import platform
import secrets
import shutil
import stat
import threading
from collections.abc import Callable, Collection, Mapping
from contextlib import AbstractContextManager, ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import retention
from .chains import chain_of, chain_view, descendants, orphans
from .checkpoint import DumpResult, dump_tree
from .cuda import CudaDriver
from .errors import SnapshotNotFound, StoreError, VerificationError
from .fingerprint import differences, digest, environment_fingerprint, hardware_fingerprint
from .incremental import make_incremental
from .inputs import held_files_changed
from .integrity import (
    IMAGES,
    VerifiedCache,
    VerifyMode,
    apply_modes,
    check_files,
    fsync_path,
    read_no_follow,
    seal,
    untrusted_folder_reason,
    write_json,
)
from .layout import BUILDS, MANIFEST, MARKER, MARKER_FORMAT, STALE, UNUSABLE, StoreFolder, store_write_error, utcnow
from .locks import LOCK, lock_snapshot, locked_snapshot, new_locked_dir
from .manifest import FileRecord, Manifest
from .page_hashing import PageImageHasher
from .restore import DEFAULT_TIMEOUT_S as DEFAULT_RESTORE_TIMEOUT_S
from .restore import RestoredTree, restore_tree
from .stages import StageClock
from .version import __version__

__all__ = [
    "BUILDS",
    "MARKER",
    "MARKER_FORMAT",
    "CorruptSnapshot",
    "Mismatch",
    "SnapshotCondition",
    "SnapshotStore",
    "VerifyMode",
    "store_write_error",
]

# A snapshot's state here: `unusable` once a restore of it failed for a reason that would recur.
SnapshotState = Literal["ready", "stale", "unusable"]


@dataclass(frozen=True)
class SnapshotCondition:
    """Whether one snapshot can be restored here (its state) and, where not, why."""

    state: SnapshotState
    reasons: builtins.list[str]


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


def _manifest_if_readable(directory: Path) -> Manifest | None:
    """The manifest of a snapshot folder that failed its checks, if it can be read at all (to say which key it had)."""
    try:
        return Manifest.from_json(read_no_follow(directory / MANIFEST))
    except (OSError, ValueError, VerificationError):
        return None


class SnapshotReader(StoreFolder):
    """Reading a store: each snapshot only once its folder is trusted and its files are the manifest's."""

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
        super().__init__(root, work_dir, cache_dir, shared, trusted_owners)
        self.verify_mode: VerifyMode = verify
        self.environment_extra = dict(environment_extra or {})
        self.verified = VerifiedCache(self.cache_dir)

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
        untrusted = self.untrusted_reason()
        untrusted = f"the store is not trusted: {untrusted}" if untrusted else None
        untrusted = untrusted or untrusted_folder_reason(self.root, directory, self.trusted_owners)
        if untrusted:
            raise VerificationError(f"snapshot {snapshot_id}: not trusted: {untrusted}")
        try:
            text = read_no_follow(directory / MANIFEST)
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
        check_files(directory / IMAGES, manifest)
        return manifest

    def listing(self) -> tuple[builtins.list[Manifest], builtins.list[CorruptSnapshot]]:
        """`scan`, for showing to people: refused (StoreError) in a folder that is not a snapkernel store, whose
        entries are someone's own files, not corrupt snapshots."""
        problem = self.not_a_store_reason()
        if problem is not None:
            raise StoreError(problem)
        return self.scan()

    def scan(self) -> tuple[builtins.list[Manifest], builtins.list[CorruptSnapshot]]:
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
        orphaned = orphans(manifests)  # restore points whose parent is gone cannot be restored
        corrupt += [CorruptSnapshot(manifest.id, orphaned[manifest.id], manifest) for manifest in manifests
                    if manifest.id in orphaned]  # fmt: skip
        kept = [manifest for manifest in manifests if manifest.id not in orphaned]
        return sorted(kept, key=lambda manifest: manifest.created), corrupt

    def chain(self, manifest: Manifest) -> builtins.list[Manifest]:
        """A snapshot, then the restore points its images are incremental to, to the full image (raise
        VerificationError when one is missing or not trusted)."""
        return chain_of(manifest, self.get)

    def _images_of(self, snapshot_id: str) -> Path:
        """A snapshot's images folder."""
        return self._snapshot_path(snapshot_id) / IMAGES

    def list(self) -> builtins.list[Manifest]:
        """Return every usable snapshot, oldest first (`scan` has the rest)."""
        return self.scan()[0]

    def verify(self, snapshot_id: str, *, key: str | None = None, mode: VerifyMode | None = None) -> Manifest:
        """Check a snapshot's folder, key and image files against its manifest; raise on any problem."""
        manifest = self.get(snapshot_id)
        if key is not None and manifest.key != key:
            raise VerificationError(
                f"snapshot {snapshot_id}: manifest key {manifest.key!r} does not match the requested key {key!r}"
            )
        for member in self.chain(manifest):
            if (mode or self.verify_mode) == "sha256":
                self.verified.verify(member, self._snapshot_path(member.id) / IMAGES)
        return manifest


class SnapshotLookup(SnapshotReader):
    """Which snapshot a start may restore: the one ladder of ready, stale and unusable."""

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

    def condition(
        self, manifest: Manifest, changes: Callable[[Manifest], builtins.list[str]] | None = None
    ) -> SnapshotCondition:
        """Whether a snapshot can be restored here: unusable (a restore failed for good), stale (this environment,
        hardware, the files it held or what `changes` finds differ), or ready; the one answer every caller uses."""
        failure = self.unusable_reason(manifest.id)
        if failure is not None:
            return SnapshotCondition("unusable", [failure])
        reasons = self.mismatches(manifest)
        if not reasons and changes is not None:
            reasons = changes(manifest)
        return SnapshotCondition("stale" if reasons else "ready", reasons)

    def newest_usable(
        self, key: str, changes: Callable[[Manifest], builtins.list[str]] | None = None
    ) -> Manifest | None:
        """Return the newest snapshot for `key` that is ready here (see `condition`)."""
        usable, _ = self.usable_and_stale(key, changes)
        return usable

    def usable_and_stale(
        self, key: str, changes: Callable[[Manifest], builtins.list[str]] | None = None
    ) -> tuple[Manifest | None, builtins.list[Mismatch]]:
        """Return the newest ready snapshot for `key` and the stale, unusable, then corrupt ones newer than it,
        with their reasons. `changes` says what else makes a snapshot stale for the caller (its inputs)."""
        stale: list[Mismatch] = []
        manifests, corrupt = self.scan()
        usable = None
        for manifest in reversed(manifests):
            if manifest.key != key:
                continue
            found = self.condition(manifest, changes)
            if found.state == "ready":
                usable = manifest
                break
            if found.state == "unusable":
                reasons = [f"snapshot {manifest.id} cannot be restored: {found.reasons[0]}"]
                stale.append(Mismatch(manifest, reasons, unusable=True))
            else:
                stale.append(Mismatch(manifest, found.reasons))
        for entry in corrupt:
            if entry.manifest is not None and entry.manifest.key == key:
                stale.append(Mismatch(entry.manifest, [f"snapshot {entry.id} is corrupt: {entry.reason}"]))
        return usable, stale

    def mark_unusable(self, snapshot_id: str, reason: str) -> None:
        """Record that a snapshot failed to restore for a reason that would recur (a no-op in a read-only store)."""
        write_json(self._snapshot_path(snapshot_id) / UNUSABLE, {"reason": reason, "when": utcnow()}, self.file_mode)

    def mark_stale(self, snapshot_id: str, reason: str) -> None:
        """Record that a snapshot failed to restore because something it depends on changed: a rebuild fixes it."""
        write_json(self._snapshot_path(snapshot_id) / STALE, {"reason": reason, "when": utcnow()}, self.file_mode)

    def unusable_reason(self, snapshot_id: str) -> str | None:
        """Why a snapshot was found unusable, or None."""
        return self._marked_reason(snapshot_id, UNUSABLE)

    def _marked_reason(self, snapshot_id: str, mark: str) -> str | None:
        """The reason recorded in a snapshot's mark file (UNUSABLE or STALE), or None."""
        try:
            return str(json.loads((self._snapshot_path(snapshot_id) / mark).read_text())["reason"])
        except (OSError, ValueError, KeyError, TypeError, SnapshotNotFound):
            return None


class SnapshotRestorer(SnapshotLookup):
    """Restoring a store's snapshots: verified, locked while CRIU reads them, through a view of their chain."""

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
        defer_gpu: bool = False,
    ) -> RestoredTree:
        """Verify a snapshot, then restore it; `pipes` maps pipe names given at dump to new fds.
        With `stopped` the tree stays stopped until ``tree.resume()``; with `defer_gpu` its GPU state stays in
        host memory until ``tree.put_gpu_state_back()``.

        The snapshot counts as being restored (clean-up and delete leave it alone) until the restored
        tree's memory is all in place, which for a `lazy` restore is after this returns.
        """
        directory = self._snapshot_path(snapshot_id)
        held = [lock_snapshot(directory, exclusive=False)]
        work = self.work_dir / f"{snapshot_id}-{secrets.token_hex(4)}"
        chain: builtins.list[Manifest] = []

        def release() -> None:
            """Remove the restore's work folder and let the snapshot go."""
            shutil.rmtree(work, ignore_errors=True)
            for fd in held:
                os.close(fd)

        try:
            manifest = self.verify(snapshot_id, key=key, mode=verify)
            chain = self.chain(manifest)
            held += [lock_snapshot(self._snapshot_path(member.id), exclusive=False) for member in chain[1:]]
            inherit = _inherited_fds(manifest, pipes or {})
            held.append(self._new_work_folder(work))
            # CRIU reads a restore point's other pages through the `parent` link of a view of its chain.
            images = chain_view(chain, self._images_of, work / "chain") if len(chain) > 1 else directory / IMAGES
            tree = restore_tree(
                images, work, inherit_fds=inherit, criu_binary=criu_binary,
                timeout=DEFAULT_RESTORE_TIMEOUT_S if timeout is None else timeout, lazy=lazy and len(chain) == 1,
                cuda_pids=manifest.cuda_pids, cuda_driver=cuda_driver, own_network=own_network, stopped=stopped,
                defer_gpu=defer_gpu,
            )  # fmt: skip
        except BaseException:
            release()
            raise
        for member in chain:
            with suppress(OSError):
                os.utime(self._snapshot_path(member.id) / LOCK)  # when it was last used, for the clean-up
        _release_once_loaded(tree, release)
        return tree

    def _new_work_folder(self, work: Path) -> int:
        """Create a restore's work folder, locked while the restore needs it (a killed server's is a leftover)."""
        try:
            self.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return new_locked_dir(self.work_dir, work.name)
        except OSError as error:
            raise StoreError(store_write_error(error, "a restore cannot create its work folder")) from None


class SnapshotStore(SnapshotRestorer):
    """Snapshots on the local disk under `root`: ``snapshots/ID/{manifest.json,images/}``."""

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
        parent: Manifest | None = None,
        clock: StageClock | None = None,
    ) -> Manifest:
        """Dump the tree rooted at `pid` and publish it atomically as `snapshot_id` (default: a new id);
        nothing is left on failure.

        `inputs` records what the process read from outside (snapkernel_engine.inputs.fingerprint_inputs).
        With `parent` (an earlier restore point of the same tree, in this store) only the pages that differ
        from the parent's are kept. With `replace`, older snapshots of the same key on this hardware are
        deleted once this one is published, with the restore points that need them (those being restored
        at that moment finish first and go at the next clean-up). `clock` gets the time of each stage.
        """
        clock = clock or StageClock()
        self.ensure_layout()
        snapshot_id = snapshot_id or new_snapshot_id()
        staging = self.staging_dir / f"{snapshot_id}.tmp"
        # Locked while this process lives: a build killed mid-dump leaves a folder the next clean-up removes.
        staging_lock = new_locked_dir(self.staging_dir, staging.name)
        held: list[int] = []
        # Worked out (and cached) while CRIU dumps, instead of after it for the manifest.
        threading.Thread(target=self.fingerprint_digest, name="snapkernel-fingerprint", daemon=True).start()
        try:
            chain = self._held_chain(parent, held) if parent is not None else []
            dumped, hashed = self._dump_into(
                staging, chain, pid, clock, pipes=pipes, leave_running=leave_running, criu_binary=criu_binary,
                gpu_state=gpu_state, cuda_driver=cuda_driver,
            )  # fmt: skip
            files = seal(staging, staging / IMAGES, self.dir_mode, self.file_mode, clock, hashed)
            manifest = _manifest_of(
                self.environment_extra, snapshot_id, key, pid, dumped, files, labels or {}, inputs or {}
            )
            if parent is not None:
                manifest = dataclasses.replace(manifest, parent=parent.id)
            self._publish(staging, manifest)
            clock.lap("publish")
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.verified.forget(snapshot_id)
            raise
        finally:
            os.close(staging_lock)
            for fd in held:
                os.close(fd)
        for member in chain:  # a chain is as recently used as its newest restore point, for the clean-up
            with suppress(OSError):
                os.utime(self._snapshot_path(member.id) / LOCK)
        if replace:
            for older in retention.replaced(self.list()):
                if older.key == key:
                    retention.try_delete(self, older.id)  # one being restored now is left to a later clean-up
            clock.lap("replace")
        return manifest

    def _dump_into(
        self, staging: Path, chain: builtins.list[Manifest], pid: int, clock: StageClock, **options: Any
    ) -> tuple[DumpResult, dict[str, FileRecord]]:
        """Dump the tree into the staging folder's images: whole, its page images hashed as CRIU writes them, or only
        the pages that differ from those of the restore point `chain[0]` (its chain verified and held by the
        caller). Return the dump and the images hashed so far."""
        if not chain:
            images = staging / IMAGES
            images.mkdir(mode=0o700)
            with PageImageHasher(images) as hasher:
                dumped = dump_tree(pid, images, staging, clock=clock, **options)
                return dumped, hasher.finish()
        dumped = dump_tree(pid, staging / "dumped", staging, clock=clock, **options)
        view = chain_view(chain, self._images_of, staging / "parent-view")
        make_incremental(staging / "dumped", view, staging / IMAGES, link=False)
        shutil.rmtree(staging / "dumped")
        shutil.rmtree(view.parent)
        clock.lap("incremental")
        return dumped, {}

    def add_fetched(self, manifest: Manifest, fetch: Callable[[Path], dict[str, FileRecord]]) -> None:
        """Publish a snapshot fetched from elsewhere (a registry): `fetch` writes its image files into the folder it
        is given and returns their sizes and hashes as computed while writing. Nothing is published unless they are
        exactly the manifest's; its restore points must be in this store already."""
        self.ensure_layout()
        self._snapshot_path(manifest.id)  # an id no snapshot can have is refused before anything is written
        if manifest.parent is not None:
            self.get(manifest.parent)
        staging = self.staging_dir / f"{manifest.id}.tmp"
        staging_lock = new_locked_dir(self.staging_dir, staging.name)
        try:
            (staging / IMAGES).mkdir(mode=0o700)
            files = fetch(staging / IMAGES)
            if files != manifest.files:
                wrong = sorted(
                    name for name in files.keys() | manifest.files.keys() if files.get(name) != manifest.files.get(name)
                )
                raise VerificationError(f"snapshot {manifest.id}: fetched {', '.join(wrong)} differ from its manifest")
            apply_modes(staging, self.dir_mode, self.file_mode)
            fsync_path(staging / IMAGES)
            self._publish(staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            self.verified.forget(manifest.id)
            raise
        finally:
            os.close(staging_lock)

    def _held_chain(self, manifest: Manifest, held: builtins.list[int]) -> builtins.list[Manifest]:
        """A snapshot's chain, each member verified and its lock held shared (the fds are added to `held`)."""
        chain = self.chain(manifest)
        for member in chain:
            held.append(lock_snapshot(self._snapshot_path(member.id), exclusive=False))
            self.verify(member.id)
        return chain

    def _publish(self, staging: Path, manifest: Manifest) -> None:
        """Write the manifest and the lock into the sealed staging folder, then move it into place at once."""
        manifest_path = staging / MANIFEST
        with open(manifest_path, "x") as handle:
            handle.write(manifest.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(manifest_path, self.file_mode)
        (staging / LOCK).touch(mode=self.file_mode)
        self.verified.remember(manifest, staging / IMAGES)
        fsync_path(staging)
        os.rename(staging, self.snapshots_dir / manifest.id)
        fsync_path(self.snapshots_dir)

    def _locked(self, snapshot_id: str, exclusive: bool) -> AbstractContextManager[Path]:
        """Hold a snapshot's lock for the duration of a block."""
        return locked_snapshot(self._snapshot_path(snapshot_id), exclusive)

    def delete(self, snapshot_id: str, listing: Collection[Manifest] | None = None) -> builtins.list[str]:
        """Delete a snapshot with the restore points that need it (those incremental to it); refuse while one of
        them is being restored, and in a folder that is not this user's store. Return the ids deleted.
        `listing` is the store's snapshots, where the caller has just listed them."""
        self._snapshot_path(snapshot_id)  # an invalid id is not found, whatever the folder holds
        if not self.claim():
            raise SnapshotNotFound(f"no snapshot {snapshot_id!r}")
        listed = self.list() if listing is None else listing
        doomed = [manifest.id for manifest in descendants(listed, snapshot_id)] + [snapshot_id]
        with ExitStack() as stack:
            directories = [stack.enter_context(self._locked(member, exclusive=True)) for member in doomed]
            for directory in directories:  # those that need another first: none is left without its parent
                self.remove_entry(directory)
        return doomed

    def remove_entry(self, entry: Path) -> None:
        """Take an entry out of the snapshots folder at once, then remove it (a symbolic link, not its target)."""
        doomed = self.staging_dir / f"{entry.name}.deleted-{secrets.token_hex(4)}"
        os.rename(entry, doomed)  # lookups stop seeing it here, however long the removal takes
        if doomed.is_dir() and not doomed.is_symlink():
            shutil.rmtree(doomed, ignore_errors=True)
        else:
            doomed.unlink(missing_ok=True)
        self.verified.forget(entry.name)

    def clean_up(
        self, *, max_age_s: float | None = None, quota_bytes: int | None = None, max_snapshots: int | None = None
    ) -> builtins.list[str]:
        """Remove what is not a usable snapshot (corrupt entries, replaced snapshots, leftovers of dead builds
        and restores), then snapshots unused for `max_age_s`, then the least recently used beyond the quota
        and the count (None: no limit), all from one listing of the store; return the ids deleted."""
        if not self.claim():
            return []
        return retention.CleanUp(self).run(max_age_s, quota_bytes, max_snapshots)

    def replaced(self, manifests: builtins.list[Manifest]) -> builtins.list[Manifest]:
        """Those of `manifests` (oldest first) that a newer one replaces (see retention.replaced)."""
        return retention.replaced(manifests)


def _release_once_loaded(tree: RestoredTree, release: Callable[[], None]) -> None:
    """Let a snapshot go at once, or, for a lazy restore, once the restored tree's memory is all in place."""
    if tree.pages_loaded.is_set():
        release()
        return

    def release_when_loaded() -> None:
        """Release the snapshot once the lazily restored tree's memory is all in place."""
        tree.pages_loaded.wait()
        release()

    threading.Thread(target=release_when_loaded, daemon=True).start()


def _manifest_of(
    environment_extra: Mapping[str, str],
    snapshot_id: str,
    key: str,
    pid: int,
    dumped: DumpResult,
    files: dict[str, FileRecord],
    labels: Mapping[str, str],
    inputs: Mapping[str, Any],
) -> Manifest:
    """The manifest of a tree just dumped: its files, what it ran on, and what CRIU found in it."""
    return Manifest(
        id=snapshot_id,
        key=key,
        created=utcnow(),
        size_bytes=sum(record.size for record in files.values()),
        rss_bytes=dumped.rss_bytes,
        dump_duration_s=round(dumped.duration_s, 3),
        pid=pid,
        versions={"criu": dumped.criu_version, "python": platform.python_version(), "engine": __version__},
        environment=environment_fingerprint(environment_extra),
        hardware=hardware_fingerprint(),
        files=files,
        pipes=dumped.pipes,
        labels=dict(labels),
        cuda_pids=dumped.cuda_pids,
        inputs=dict(inputs),
        held_files=dumped.held_files,
    )


def _inherited_fds(manifest: Manifest, pipes: Mapping[str, int]) -> dict[str, int]:
    """The fds a restore hands over, by the pipe each replaces; refuse names the snapshot has no pipe for."""
    unknown = sorted(set(pipes) - manifest.pipes.keys())
    if unknown:
        raise VerificationError(
            f"snapshot {manifest.id} has no pipe named {', '.join(unknown)} "
            f"(it has: {', '.join(sorted(manifest.pipes)) or 'none'})"
        )
    return {manifest.pipes[name]: fd for name, fd in pipes.items()}
