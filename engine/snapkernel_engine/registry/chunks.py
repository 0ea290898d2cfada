"""Content-defined chunks of page images: cut where the content says, so pages that two dumps share, wherever
they sit in each file, mostly fall into chunks that both dumps share."""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PAGE = 4096  # CRIU's pages-*.img hold whole 4 KiB pages, so a cut between pages is never inside one
# Measured on two builds of examples/torch_setup.ipynb (the last setup cell changed): 72% of the second's pages
# are the first's, at other offsets, and the second uploads 28.5-29.2% of its pages at any average from 16 to 256
# pages. So chunks are large: fewer requests.
MIN_PAGES = 64  # 256 KiB: fewer, larger blobs where many pages in a row are cut points (runs of zero pages)
AVERAGE_PAGES = 256  # 1 MiB: a page is a cut point with this odds; a changed page costs about this much upload
MAX_PAGES = 2048  # 8 MiB: the largest blob, where no page is a cut point for long
READ_BYTES = 8 * 2**20


@dataclass(frozen=True)
class Chunk:
    """One piece of a file: where it starts, how long it is, and its sha256 (the blob's digest)."""

    offset: int
    size: int
    sha256: str


def is_cut_point(page: bytes | memoryview) -> bool:
    """Whether a chunk ends after this page: decided by the page's content alone, so shifted pages cut alike."""
    return zlib.crc32(page) % AVERAGE_PAGES == 0


def chunk_file(path: Path) -> Iterator[Chunk]:
    """The chunks of a file, in order: content-defined for page images, cut only at page boundaries."""
    offset = 0
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            view = memoryview(block)
            for start in range(0, len(view), PAGE):
                page = view[start : start + PAGE]
                digest.update(page)
                size += len(page)
                pages = size // PAGE
                if (pages >= MIN_PAGES and is_cut_point(page)) or pages >= MAX_PAGES:
                    yield Chunk(offset, size, digest.hexdigest())
                    offset += size
                    digest, size = hashlib.sha256(), 0
    if size:
        yield Chunk(offset, size, digest.hexdigest())
