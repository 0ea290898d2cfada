"""The restore copy floor of this machine: copy_floor.c, compiled here, timed on a file in the page cache.

A restore can be no faster than copying its pages from the page cache into fresh memory; the engine
part of `make bench` prints CRIU's restore of 1 GB next to this floor, measured in the same run.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("copy_floor.c")
WRITE_CHUNK = 16 << 20


def compiled(folder: Path) -> Path:
    """copy_floor.c built into `folder` with the machine's C compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc) to build benchmarks/copy_floor.c")
    binary = folder / "copy_floor"
    subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary), str(SOURCE)], check=True, capture_output=True)
    return binary


def page_cache_file(folder: Path, size_bytes: int) -> Path:
    """A file of `size_bytes` random bytes, written and then read once, so that it is in the page cache."""
    path = folder / "pages.bin"
    with open(path, "wb") as out:
        for done in range(0, size_bytes, WRITE_CHUNK):
            out.write(os.urandom(min(WRITE_CHUNK, size_bytes - done)))
    with open(path, "rb") as again:
        while again.read(WRITE_CHUNK):
            pass
    return path


def copy_floor(size_bytes: int, threads: tuple[int, ...] = (1, 2), runs: int = 5) -> dict[str, float]:
    """Median seconds to copy `size_bytes` from the page cache into fresh memory, by thread count
    (``floor_1thread_s``, ``floor_2threads_s``, ...); the thread counts alternate run by run."""
    seconds: dict[int, list[float]] = {count: [] for count in threads}
    with tempfile.TemporaryDirectory(prefix="snapkernel-floor-", dir="/var/tmp") as root:
        folder = Path(root)
        binary = compiled(folder)
        data = page_cache_file(folder, size_bytes)
        for _ in range(runs):
            for count in threads:
                result = subprocess.run([str(binary), str(data), str(count)], capture_output=True, text=True)
                if result.returncode != 0:
                    raise RuntimeError(f"copy_floor failed: {result.stderr.strip()}")
                seconds[count].append(float(json.loads(result.stdout)["seconds"]))
    return {floor_name(count): statistics.median(values) for count, values in seconds.items()}


def floor_name(threads: int) -> str:
    """The result field of the floor with `threads` threads."""
    return f"floor_{threads}thread{'s' if threads > 1 else ''}_s"
