"""Dump time, restore time and image size for processes of about 100 MB and 1 GB RSS."""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine import SnapshotStore, process

HOLDER = """
import os, sys
data = bytearray(os.urandom(1 << 20) * int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print(len(data), flush=True)
"""


def measure(store: SnapshotStore, size_mb: int) -> dict[str, float]:
    """Dump a process holding `size_mb` MB, then restore it once; return the timings."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(size_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        holder.stdout.readline()
        rss = process.tree_rss_bytes(holder.pid)
        started = time.perf_counter()
        manifest = store.checkpoint(holder.pid, "bench", pipes={"stdin": 0, "stdout": 1})
        dump_s = time.perf_counter() - started
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # Time a full sha256 check: forget the hashes remembered at publishing.
    store.forget_verified(manifest.id)
    started = time.perf_counter()
    store.verify(manifest.id, mode="sha256")
    verify_s = time.perf_counter() - started

    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    started = time.perf_counter()
    tree = store.restore(manifest.id, pipes={"stdin": stdin_read, "stdout": stdout_write}, verify="size")
    restore_s = time.perf_counter() - started
    os.close(stdin_read)
    os.close(stdout_write)
    with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
        to_tree.write("go\n")
        to_tree.flush()
        answered = int(from_tree.readline())
    reply_s = time.perf_counter() - started
    assert answered == size_mb << 20
    tree.kill()
    store.delete(manifest.id)
    return {
        "rss_mb": rss / 1e6,
        "image_mb": manifest.size_bytes / 1e6,
        "criu_dump_s": manifest.dump_duration_s,
        "dump_s": dump_s,
        "verify_s": verify_s,
        "restore_s": restore_s,
        "first_reply_s": reply_s,
    }


def main() -> None:
    """Run the benchmark and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="MB of data each process holds")
    parser.add_argument("--runs", type=int, default=5, help="runs per size (median reported)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-", dir="/var/tmp") as root:
        store = SnapshotStore(Path(root))
        for size_mb in map(int, args.sizes.split(",")):
            runs = [measure(store, size_mb) for _ in range(args.runs)]
            median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
            results.append({"size_mb": size_mb, "runs": args.runs, **median})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'data':>7} {'RSS':>9} {'image':>9} {'CRIU dump':>10} {'published':>10} {'sha256':>8} "
        f"{'restore':>8} {'1st reply':>10}  runs"
    )
    for row in results:
        print(
            f"{row['size_mb']:>4} MB {row['rss_mb']:>6.0f} MB {row['image_mb']:>6.0f} MB "
            f"{row['criu_dump_s']:>9.2f}s {row['dump_s']:>9.2f}s {row['verify_s']:>7.2f}s "
            f"{row['restore_s']:>7.2f}s {row['first_reply_s']:>9.2f}s"
            f"  {row['runs']}"
        )


if __name__ == "__main__":
    main()
