"""Restore points in chains: a snapshot whose images hold only the pages that differ from its parent's.

The store never holds a symbolic link, so a snapshot names its parent in its manifest; a restore (or a
dump made incremental against it) reads the chain through a view in a private folder: links to each
member's image files, and a `parent` link from each member's view to the next.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from .errors import SnapshotNotFound, VerificationError
from .incremental import PARENT_LINK
from .manifest import Manifest

MAX_CHAIN = 256  # far more restore points than any setup makes: a longer chain is a loop of parents


def chain_of(manifest: Manifest, get: Callable[[str], Manifest]) -> list[Manifest]:
    """A snapshot, then its parent, its parent's parent… to the full image; VerificationError if one is missing."""
    chain = [manifest]
    while chain[-1].parent is not None:
        parent_id = chain[-1].parent
        if len(chain) >= MAX_CHAIN or any(member.id == parent_id for member in chain):
            raise VerificationError(f"snapshot {manifest.id}: its chain of restore points loops")
        try:
            chain.append(get(parent_id))
        except SnapshotNotFound:
            raise VerificationError(
                f"snapshot {manifest.id}: restore point {parent_id}, which it is incremental to, is gone"
            ) from None
        except VerificationError as error:
            raise VerificationError(f"snapshot {manifest.id}: its parent is not usable: {error}") from None
    return chain


def orphans(manifests: Iterable[Manifest]) -> dict[str, str]:
    """Of these snapshots, those whose chain misses a member, with why (their images cannot be restored)."""
    by_id = {manifest.id: manifest for manifest in manifests}
    missing: dict[str, str] = {}
    changed = True
    while changed:
        changed = False
        for manifest in by_id.values():
            parent = manifest.parent
            if parent is None or manifest.id in missing:
                continue
            if parent not in by_id or parent in missing:
                missing[manifest.id] = f"restore point {parent}, which it is incremental to, is missing or corrupt"
                changed = True
    return missing


def descendants(manifests: Iterable[Manifest], snapshot_id: str) -> list[Manifest]:
    """The snapshots that need `snapshot_id` (its children, theirs…), each after every one that needs it."""
    children: dict[str, list[Manifest]] = {}
    for manifest in manifests:
        if manifest.parent is not None:
            children.setdefault(manifest.parent, []).append(manifest)
    ordered: list[Manifest] = []

    def visit(parent: str, depth: int) -> None:
        for child in children.get(parent, []):
            if depth < MAX_CHAIN and child not in ordered:
                visit(child.id, depth + 1)
                ordered.append(child)

    visit(snapshot_id, 0)
    return ordered


def chain_bytes(chain: Iterable[Manifest]) -> int:
    """What a chain takes on disk."""
    return sum(manifest.size_bytes for manifest in chain)


def chain_view(chain: list[Manifest], images_of: Callable[[str], Path], folder: Path) -> Path:
    """Make in `folder` (new, private) the images folder CRIU reads for `chain[0]`: links to its files and a
    `parent` link to the same view of its parent; return it."""
    folder.mkdir(mode=0o700)
    views = [folder / manifest.id for manifest in chain]
    for manifest, view in zip(chain, views, strict=True):
        view.mkdir(mode=0o700)
        for name in manifest.files:
            os.symlink(images_of(manifest.id) / name, view / name)
    for view, parent_view in itertools.pairwise(views):
        os.symlink(os.path.join("..", parent_view.name), view / PARENT_LINK)
    return views[0]
