"""Incremental images: a dump rewritten to keep only the pages that differ from an earlier dump's.

CRIU's own incremental dumps need soft-dirty memory tracking, which these machines' kernels lack. So a
dump of the same process tree after an earlier one (its parent) is rewritten instead:

- each run of pages whose content equals the parent's page at the same address becomes a pagemap entry
  flagged ``PE_PARENT``;
- only the other pages stay in the ``pages-N.img`` file;
- a relative ``parent`` link in the images folder lets CRIU's restore read the rest from the parent, which
  may be incremental too.

The entries stay in ascending address order, as CRIU reads a parent strictly forwards.
"""

from __future__ import annotations

import bisect
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import CriuUnavailable

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
PE_PARENT, PE_LAZY, PE_PRESENT = 1, 2, 4  # pagemap_entry.flags (CRIU's images/pagemap.proto)
PARENT_LINK = "parent"
PAGEMAP_PREFIX = "pagemap-"
SHARED_MEMORY_PAGEMAP_PREFIX = "pagemap-shmem-"
COMPARED_PAGES = 256  # pages compared at once before a run is compared page by page (1 MiB)


@dataclass(frozen=True)
class IncrementalImage:
    """What rewriting a dump against its parent kept: pages in all, and those stored in this image."""

    pages: int
    stored_pages: int

    @property
    def stored_bytes(self) -> int:
        """Bytes of page data this image stores itself."""
        return self.stored_pages * PAGE_SIZE


def _images() -> Any:
    """pycriu's image codec."""
    try:
        import pycriu.images
    except ImportError as error:
        raise CriuUnavailable(
            "pycriu is not importable: run `jupyter snapkernel install-criu` (it installs pycriu from CRIU's lib/)"
        ) from error
    return pycriu.images


def load_pagemap(path: Path) -> list[dict[str, Any]]:
    """A pagemap image's head (its pages file's id) followed by its entries."""
    with path.open("rb") as file:
        entries: list[dict[str, Any]] = _images().load(file)["entries"]
    return entries


def dump_pagemap(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write a pagemap image: a head, then entries."""
    with path.open("wb") as file:
        _images().dump({"magic": "PAGEMAP", "entries": entries}, file)


def entry_pages(entry: dict[str, Any]) -> int:
    """How many pages a pagemap entry covers."""
    return int(entry.get("nr_pages") or entry.get("compat_nr_pages") or 0)


def stored_here(entry: dict[str, Any]) -> bool:
    """Whether an entry's pages are in its own image's pages file (not in a parent, not a hole)."""
    flags = int(entry.get("flags", 0))
    return bool(flags & PE_PRESENT) and not flags & PE_PARENT


def entry(vaddr: int, pages: int, flags: int) -> dict[str, Any]:
    """A pagemap entry (CRIU 4.2 requires compat_nr_pages: the count is nr_pages)."""
    return {"vaddr": vaddr, "compat_nr_pages": 0, "flags": flags, "nr_pages": pages}


@dataclass(frozen=True)
class Pages:
    """Pages stored from `offset` on in an open pages file.

    Read with pread, not mapped: comparing bytes read from the page cache runs at memcmp speed, about 8
    times what comparing mapped memory does (a page fault per page, then an element-wise comparison)."""

    fd: int
    offset: int

    def read(self, first: int, count: int) -> bytes:
        """Pages `first` to `first + count` of these."""
        return os.pread(self.fd, count * PAGE_SIZE, self.offset + first * PAGE_SIZE)

    def after(self, pages: int) -> Pages:
        """These pages from page `pages` on."""
        return Pages(self.fd, self.offset + pages * PAGE_SIZE)


class PageSource:
    """One process's pages in an images folder, by address, following the folder's parent links."""

    def __init__(self, images_dir: Path, pagemap_name: str) -> None:
        self.images_dir = images_dir
        head, *self.entries = load_pagemap(images_dir / pagemap_name)
        pages_file = images_dir / f"pages-{head['pages_id']}.img"
        self._starts = [int(item["vaddr"]) for item in self.entries]
        self._offsets: list[int | None] = []
        offset = 0
        for item in self.entries:
            here = stored_here(item)
            self._offsets.append(offset if here else None)
            offset += entry_pages(item) * PAGE_SIZE if here else 0
        self._fd = os.open(pages_file, os.O_RDONLY) if offset else -1
        parent_dir = images_dir / PARENT_LINK
        self.parent = PageSource(parent_dir.resolve(), pagemap_name) if (parent_dir / pagemap_name).exists() else None

    def close(self) -> None:
        """Close this image's pages file and its parents'."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self.parent is not None:
            self.parent.close()

    def runs(self, vaddr: int, pages: int) -> Iterator[tuple[int, int, Pages | None]]:
        """The pages from `vaddr` on as runs of (first page, count, their bytes or None where this image
        and its parents hold no page there)."""
        index, end = 0, pages
        # Entries are in address order: skip those that end before `vaddr` (a parent has thousands).
        first_entry = max(bisect.bisect_right(self._starts, vaddr) - 1, 0)
        for position in range(first_entry, len(self.entries)):
            item, offset = self.entries[position], self._offsets[position]
            start, count = item["vaddr"], entry_pages(item)
            if start >= vaddr + end * PAGE_SIZE:
                break
            first = max(vaddr + index * PAGE_SIZE, start)
            last = min(vaddr + end * PAGE_SIZE, start + count * PAGE_SIZE)
            if first >= last:
                continue
            if first > vaddr + index * PAGE_SIZE:  # a gap before this entry
                gap = (first - vaddr) // PAGE_SIZE - index
                yield index, gap, None
                index += gap
            span = (last - first) // PAGE_SIZE
            yield from self._entry_runs(item, offset, first, index, span)
            index += span
        if index < end:
            yield index, end - index, None

    def _entry_runs(
        self, item: dict[str, Any], offset: int | None, first: int, index: int, span: int
    ) -> Iterator[tuple[int, int, Pages | None]]:
        """The runs of `span` pages of one entry from address `first` (page `index` of the caller's range)."""
        if offset is not None:
            yield index, span, Pages(self._fd, offset + first - item["vaddr"])
        elif int(item.get("flags", 0)) & PE_PARENT and self.parent is not None:
            for sub_index, count, data in self.parent.runs(first, span):
                yield index + sub_index, count, data
        else:
            yield index, span, None


def same_pages(mine: Pages, theirs: Pages | None, pages: int) -> list[bool]:
    """For each of `pages` pages, whether `mine` equals `theirs` there (never where `theirs` is None)."""
    if theirs is None:
        return [False] * pages
    verdicts: list[bool] = []
    for start in range(0, pages, COMPARED_PAGES):
        count = min(COMPARED_PAGES, pages - start)
        block, their_block = mine.read(start, count), theirs.read(start, count)
        if block == their_block:
            verdicts += [True] * count
        else:
            verdicts += [
                block[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
                == their_block[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
                for page in range(count)
            ]
    return verdicts


def runs_of(verdicts: list[bool]) -> Iterator[tuple[int, int, bool]]:
    """Runs of equal verdicts: (first index, count, verdict)."""
    start = 0
    for index in range(1, len(verdicts) + 1):
        if index == len(verdicts) or verdicts[index] != verdicts[start]:
            yield start, index - start, verdicts[start]
            start = index


def compared_with_parent(mine: Pages, vaddr: int, pages: int, parent: PageSource | None) -> list[bool]:
    """For each page of `mine` (from `vaddr`), whether the parent holds the same bytes at that address."""
    if parent is None:
        return [False] * pages
    verdicts: list[bool] = []
    for first, count, theirs in parent.runs(vaddr, pages):
        verdicts += same_pages(mine.after(first), theirs, count)
    return verdicts


def copy_pages(pages: Pages, first: int, count: int, out: BinaryIO) -> None:
    """Write `count` of `pages` from page `first` on to `out`, a few megabytes at a time."""
    for start in range(first, first + count, COMPARED_PAGES * 16):
        out.write(pages.read(start, min(COMPARED_PAGES * 16, first + count - start)))


def rewrite_pagemap(child_dir: Path, out_dir: Path, pagemap_name: str, parent: PageSource | None) -> IncrementalImage:
    """Write one process's pagemap and pages file into `out_dir`, the pages its parent holds as PE_PARENT runs."""
    head, *entries = load_pagemap(child_dir / pagemap_name)
    pages_name = f"pages-{head['pages_id']}.img"
    kept, pages, stored = [head], 0, 0
    with (child_dir / pages_name).open("rb") as data, (out_dir / pages_name).open("wb") as out:
        mine = Pages(data.fileno(), 0)
        for item in entries:
            if not stored_here(item):
                kept.append(item)
                continue
            count = entry_pages(item)
            for first, run, same in runs_of(compared_with_parent(mine, item["vaddr"], count, parent)):
                vaddr = item["vaddr"] + first * PAGE_SIZE
                kept.append(entry(vaddr, run, PE_PARENT if same else int(item["flags"])))
                if not same:
                    copy_pages(mine, first, run, out)
                    stored += run
            mine = mine.after(count)
            pages += count
    dump_pagemap(out_dir / pagemap_name, kept)
    return IncrementalImage(pages, stored)


def make_incremental(child_dir: Path, parent_dir: Path, out_dir: Path, *, link: bool = True) -> IncrementalImage:
    """Write into `out_dir` (new) the dump in `child_dir` keeping only the pages that differ from the dump in
    `parent_dir` (a later dump of the same tree), with a relative `parent` link to `parent_dir` (`link`; the
    store links it in a view of its own instead)."""
    out_dir.mkdir(mode=0o700, parents=True)
    pagemaps = sorted(
        path.name
        for path in child_dir.iterdir()
        if path.name.startswith(PAGEMAP_PREFIX) and not path.name.startswith(SHARED_MEMORY_PAGEMAP_PREFIX)
    )
    written = set(pagemaps)
    pages = stored = 0
    for name in pagemaps:
        parent = PageSource(parent_dir, name) if (parent_dir / name).exists() else None
        try:
            result = rewrite_pagemap(child_dir, out_dir, name, parent)
        finally:
            if parent is not None:
                parent.close()
        pages, stored = pages + result.pages, stored + result.stored_pages
        written.add(f"pages-{load_pagemap(child_dir / name)[0]['pages_id']}.img")
    for path in child_dir.iterdir():
        if path.name not in written and path.name != PARENT_LINK:
            shutil.copy2(path, out_dir / path.name)
    if link:
        os.symlink(os.path.relpath(parent_dir, out_dir), out_dir / PARENT_LINK)
    return IncrementalImage(pages, stored)
