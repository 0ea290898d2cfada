"""Rewrite the credentials in a CRIU image so that an ordinary user can restore it as themselves.

An image dumped by one user (an administrator preparing a course snapshot) names that user's
uid, gid and capabilities. Restoring it inside ``unshare --user --map-current-user`` fails: only
the restoring user's own uid and gid are mapped there, and CRIU refuses the foreign ids
(``Unable to set real, effective and saved user ID: -22``). `rewrite_for_user` writes a private
directory in which the few small images that carry ids are rewritten copies and every other
file, the pages above all, is a symbolic link into the shared, untouched directory.

The rewrite: every uid becomes the user's uid and every gid their gid (no other id is mapped in
the restoring namespace); the threads lose every capability; the bounding set becomes the
image's intersected with the restoring process's (CRIU only drops bits, with CAP_SETPCAP); the
supplementary groups become `groups`, which must be empty or exactly what ``getgroups()`` returns
inside the restoring namespace, order included (setgroups() is denied there and CRIU calls it
only when the lists differ; empty keeps the restoring process's own groups, the unmapped ones
shown as 65534); an audit loginuid is dropped.
The restore must be given the private directory as images directory and a separate work
directory for its logs.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .errors import SnapshotError
from .incremental import PARENT_LINK
from .privileges import capability_set

NO_ID = 0xFFFFFFFF  # "unset" (fown of a file nobody F_SETOWN'd, an unset loginuid): keep as is

# Image types whose entries can hold uids or gids (creds, fown, file_perms, ipc_desc, memfd,
# ghost files, ttys, cgroup perms). Only these are decoded; every other file is linked.
ID_IMAGES = frozenset(
    {
        "CORE", "CREDS", "FILES", "REG_FILES", "PIPES", "FIFO", "UNIXSK", "INETSK", "NETLINK_SK",
        "PACKETSK", "EVENTFD_FILE", "EVENTPOLL_FILE", "SIGNALFD", "TIMERFD", "TUNFILE", "TTY_FILES",
        "TTY_INFO", "EXT_FILES", "INOTIFY_FILE", "FANOTIFY_FILE", "MEMFD_INODE", "GHOST_FILE", "PIDFD",
        "BPFMAP_FILE", "CGROUP", "IPCNS_MSG", "IPCNS_SEM", "IPCNS_SHM", "MNTS",
    }
)  # fmt: skip
UID_KEYS = frozenset({"uid", "euid", "suid", "fsuid", "cuid"})
GID_KEYS = frozenset({"gid", "egid", "sgid", "fsgid", "cgid"})
CAP_WORDS = 2  # CRIU stores each capability set as two u32 words (CR_CAP_SIZE)


class CredentialsError(SnapshotError):
    """An image cannot be rewritten for another user."""


def image_kind(path: Path) -> str | None:
    """Return the CRIU magic name of a protobuf image, or None for a raw image (pages, tarballs)."""
    from pycriu.images import magic  # lazy: pycriu and protobuf take a while to import

    with open(path, "rb") as handle:
        header = handle.read(8)
    words = [word for (word,) in struct.iter_unpack("<i", header[: len(header) // 4 * 4])]
    if words and words[0] in (magic.by_name["IMG_COMMON"], magic.by_name["IMG_SERVICE"]):
        kind = magic.by_val.get(words[1]) if len(words) > 1 else None
        if kind is None:
            raise CredentialsError(f"cannot parse CRIU image {path}: unknown image magic")
        return str(kind)
    # Only the inventory has no common header; anything else without one is raw data.
    return "INVENTORY" if words and magic.by_val.get(words[0]) == "INVENTORY" else None


def load_image(path: Path) -> dict[str, Any]:
    """Load a protobuf image as pycriu's dict, raising CredentialsError that names the file."""
    from pycriu import images

    try:
        with open(path, "rb") as handle:
            image: dict[str, Any] = images.load(handle)  # pycriu is untyped: its loader gives a dict
            return image
    except Exception as error:
        raise CredentialsError(f"cannot parse CRIU image {path}: {error!r}") from error


def rewrite_for_user(
    images_dir: Path,
    target_dir: Path,
    uid: int,
    gid: int,
    groups: Sequence[int] = (),
    *,
    bounding: int | None = None,
) -> None:
    """Fill the empty `target_dir` with id-rewritten copies of the images that carry ids and links to the rest
    (and to the parent images of a restore point)."""
    source = images_dir.resolve(strict=True)
    bounding = capability_set("CapBnd") if bounding is None else bounding
    if not target_dir.is_dir() or target_dir.is_symlink():
        raise CredentialsError(f"{target_dir} is not a directory")
    if any(target_dir.iterdir()):
        raise CredentialsError(f"{target_dir} is not empty")
    names = sorted(entry.name for entry in source.iterdir() if entry.is_file() and not _written_by_restore(entry.name))
    if not any(name.startswith("core-") for name in names):
        raise CredentialsError(f"{source} holds no core-*.img: not a CRIU images directory")
    created: list[Path] = []
    try:
        for name in names:
            destination = target_dir / name
            image = _rewritten(source / name, uid, gid, groups, bounding)
            if image is None:
                os.symlink(source / name, destination)
            else:
                _write_image(destination, image)
            created.append(destination)
        # A restore point reads the pages it does not hold from its parent, which holds no credentials.
        if (source / PARENT_LINK).is_dir():
            os.symlink((source / PARENT_LINK).resolve(), target_dir / PARENT_LINK)
            created.append(target_dir / PARENT_LINK)
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise


def _written_by_restore(name: str) -> bool:
    """Say whether CRIU may create this name in an images directory, so a link to it must never exist."""
    # A restore without a separate work dir writes its log and stats there: through a link it
    # would truncate the shared file (as root) or fail (as a user).
    return name.endswith(".log") or name.startswith("stats-")


def _rewritten(path: Path, uid: int, gid: int, groups: Sequence[int], bounding: int) -> dict[str, Any] | None:
    """Return the rewritten image at `path`, or None when it carries no ids and can be linked."""
    if path.name.startswith("pages-"):
        return None
    kind = image_kind(path)
    if kind == "USERNS":
        raise CredentialsError(f"{path}: the image has its own user namespace, whose id maps cannot be rewritten")
    if kind not in ID_IMAGES:
        if path.name.startswith("core-"):
            raise CredentialsError(f"cannot parse CRIU image {path}: not a core image (magic {kind})")
        return None
    image = load_image(path)
    changed = False
    for entry in image["entries"]:
        if kind == "CORE":
            changed |= _rewrite_core(entry, path, groups, bounding)
        elif kind == "CREDS":
            _rewrite_creds(entry, groups, bounding)
            changed = True
        changed |= _rewrite_ids(entry, uid, gid)
    return image if changed else None


def _rewrite_core(entry: dict[str, Any], path: Path, groups: Sequence[int], bounding: int) -> bool:
    """Rewrite the non-id credentials of one thread's core entry; return whether it changed."""
    # Restoring it needs CAP_AUDIT_CONTROL in the initial namespace; CRIU skips it in a user namespace
    # (measured), but a privileged restore of the copy must not give the user the dumper's audit id.
    changed = bool(entry.get("tc", {}).pop("loginuid", NO_ID) != NO_ID)
    creds = entry.get("thread_core", {}).get("creds")
    if creds is None:
        if not (path.parent / f"creds-{path.name.removeprefix('core-')}").exists():
            raise CredentialsError(f"{path}: no credentials in the core image and no creds image beside it")
        return changed
    _rewrite_creds(creds, groups, bounding)
    return True


def _rewrite_creds(creds: dict[str, Any], groups: Sequence[int], bounding: int) -> None:
    """Drop every capability, narrow the bounding set and replace the supplementary groups."""
    for key in ("cap_inh", "cap_prm", "cap_eff", "cap_amb"):
        creds[key] = [0] * CAP_WORDS
    image_bounding = _join_caps(creds.get("cap_bnd", []))
    # Intersected, not replaced: bits the dumper gave up stay dropped (CRIU drops, never adds).
    creds["cap_bnd"] = _split_caps(image_bounding & bounding)
    # pycriu cannot encode an empty repeated field: leave the key out instead.
    creds.pop("groups", None)
    if groups:
        creds["groups"] = list(groups)


def _rewrite_ids(node: Any, uid: int, gid: int) -> bool:
    """Replace every uid and gid field below `node` in place; return whether any value changed."""
    changed = False
    for parent, key, value in _id_fields(node):
        new = uid if key in UID_KEYS else gid
        if value != new:
            parent[key] = new
            changed = True
    return changed


def _id_fields(node: Any) -> Iterator[tuple[dict[str, Any], str, int]]:
    """Yield (dict, key, value) for every set uid or gid field in a decoded image entry."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in UID_KEYS or key in GID_KEYS:
                if isinstance(value, int) and value not in (NO_ID, -1):
                    yield node, key, value
            elif isinstance(value, dict | list):
                yield from _id_fields(value)
    elif isinstance(node, list):
        for item in node:
            yield from _id_fields(item)


def _join_caps(words: Sequence[int]) -> int:
    """Return a capability set stored as u32 words (lowest first) as one integer."""
    return sum(word << (32 * index) for index, word in enumerate(words))


def _split_caps(mask: int) -> list[int]:
    """Return a capability mask as CRIU's u32 words, lowest first."""
    return [(mask >> (32 * index)) & 0xFFFFFFFF for index in range(CAP_WORDS)]


def _write_image(path: Path, image: dict[str, Any]) -> None:
    """Write a decoded image to a new file that must not exist yet (no link is ever followed)."""
    from pycriu import images

    try:
        data = images.dumps(image)
    except Exception as error:
        raise CredentialsError(f"cannot encode the rewritten image {path.name}: {error!r}") from error
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
