"""Hash CRIU's page images while CRIU writes them, so that almost no hashing is left once the dump ends."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from .manifest import FileRecord

# CRIU appends to a page image from front to back and never rewrites it: what was hashed stays as hashed.
PAGE_IMAGE = re.compile(r"pages-\d+\.img")
READ_BYTES = 4 << 20
# How long the follower waits for CRIU to append more before it looks again; it is woken at once when CRIU ends.
IDLE_WAIT_S = 0.002


_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, count: int) -> None:
    """Have the kernel start writing a range of a file to disk, without waiting: the fsync after the dump then
    finds little left to flush."""
    _libc.sync_file_range(fd, offset, count, SYNC_FILE_RANGE_WRITE)  # a failure only leaves more to the fsync


@dataclass
class _Followed:
    """A page image being hashed: its open file, the hash so far, and how many bytes went into it."""

    fd: int
    digest: Any = field(default_factory=lambda: hashlib.sha256())
    offset: int = 0


class PageImageHasher:
    """Follow the page images (``pages-N.img``) that appear in a folder and hash each as CRIU appends to it, on a
    thread of its own; `finish`, called once CRIU is done, hashes what is left and gives each image's record.

    Use it as a context manager around the dump: leaving the block stops the thread and closes the files."""

    def __init__(self, images: Path) -> None:
        self.images = images
        self.hashed_bytes = 0  # so far, in all page images
        self.hashed_while_writing = 0  # bytes hashed before `finish` was called
        self._followed: dict[str, _Followed] = {}
        self._written = threading.Event()
        self._stopped = threading.Event()
        self._error: BaseException | None = None
        self._buffer = bytearray(READ_BYTES)
        self._thread = threading.Thread(target=self._follow, name="snapkernel-page-hash", daemon=True)

    def __enter__(self) -> PageImageHasher:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stopped.set()
        self._thread.join()
        for followed in self._followed.values():
            os.close(followed.fd)
        self._followed.clear()

    def finish(self) -> dict[str, FileRecord]:
        """The size and sha256 of every page image, once the writer has closed them all (raise OSError if one
        could not be read, or is no longer the file that was followed)."""
        self.hashed_while_writing = self.hashed_bytes
        self._written.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
        records: dict[str, FileRecord] = {}
        for name, followed in sorted(self._followed.items()):
            on_disk, held = os.stat(self.images / name), os.fstat(followed.fd)
            if (on_disk.st_ino, on_disk.st_size) != (held.st_ino, followed.offset):
                raise OSError(f"{name} changed after it was hashed ({followed.offset} bytes hashed)")
            records[name] = FileRecord(size=followed.offset, sha256=followed.digest.hexdigest())
        return records

    def _follow(self) -> None:
        """Hash what CRIU appended, over and over, until CRIU is done (then to the end) or the block is left."""
        try:
            while not self._stopped.is_set():
                last_pass = self._written.is_set()  # read before the pass: that pass then sees every byte
                progressed = self._hash_appended()
                if last_pass:
                    return
                if not progressed:
                    self._written.wait(IDLE_WAIT_S)
        except BaseException as error:  # handed to `finish`, in the dumping thread
            self._error = error

    def _hash_appended(self) -> bool:
        """Open the page images that appeared and hash each one's new bytes; whether there were any."""
        with os.scandir(self.images) as entries:
            for entry in entries:
                if entry.name not in self._followed and PAGE_IMAGE.fullmatch(entry.name):
                    self._followed[entry.name] = _Followed(os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW))
        progressed = False
        view = memoryview(self._buffer)
        for followed in self._followed.values():
            while not self._stopped.is_set():
                count = os.preadv(followed.fd, [view], followed.offset)
                if count == 0:
                    break
                followed.digest.update(view[:count])
                start_writeback(followed.fd, followed.offset, count)
                followed.offset += count
                self.hashed_bytes += count
                progressed = True
        return progressed
