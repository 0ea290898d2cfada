"""Dump time, restore time and image size for processes of about 100 MB and 1 GB RSS.

The dump is timed end to end (to a published snapshot, its images hashed and flushed), beside CRIU's own dump,
and split into its stages (snapkernel_engine.stages).

With ``--concurrent N``: one image restored N times at once (what a burst of kernel starts costs
on this machine's cores): the wall time until all are restored and answered, and the CPU time the
restores' helpers (unshare, the namespace init, CRIU) and this process spent per restore.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from snapkernel_engine import SnapshotStore, process
from snapkernel_engine.stages import CHECKPOINT_STAGES, StageClock, describe_stages

PAGE_READ_THREADS = "CRIU_PAGE_READ_THREADS"  # the patched restorer's thread count (1: one thread, as upstream)
HOLDER = """
import os, sys
data = bytearray(os.urandom(1 << 20) * int(sys.argv[1]))
print("ready", flush=True)
sys.stdin.readline()
print(len(data), flush=True)
"""


def start_holder(size_mb: int) -> subprocess.Popen[str]:
    """Start a process holding `size_mb` MB of random data that waits for a line on stdin."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(size_mb)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    holder.stdout.readline()
    return holder


def measure(store: SnapshotStore, size_mb: int) -> dict[str, float]:
    """Dump a process holding `size_mb` MB, then restore it once; return the timings."""
    holder = start_holder(size_mb)
    try:
        rss = process.tree_rss_bytes(holder.pid)
        clock = StageClock()
        started = time.perf_counter()
        manifest = store.take_snapshot(holder.pid, "bench", pipes={"stdin": 0, "stdout": 1}, clock=clock)
        dump_s = time.perf_counter() - started
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    # Time a full sha256 check: forget the hashes remembered at publishing.
    store.verified.forget(manifest.id)
    started = time.perf_counter()
    store.verify(manifest.id, mode="sha256")
    verify_s = time.perf_counter() - started

    restore_s, reply_s, criu_restore_s = restore_and_ask(store, manifest.id, size_mb, time.perf_counter())
    with page_read_threads(1):
        restore_1thread_s, _, criu_restore_1thread_s = restore_and_ask(store, manifest.id, size_mb, time.perf_counter())
    store.delete(manifest.id)
    return {
        "rss_mb": rss / 1e6,
        "image_mb": manifest.size_bytes / 1e6,
        "criu_dump_s": manifest.dump_duration_s,
        "dump_s": dump_s,
        "dump_gbps": manifest.size_bytes / dump_s / 1e9,
        "dump_over_criu": dump_s / manifest.dump_duration_s,
        **{stage_key(name): clock.seconds.get(name, 0.0) for name in CHECKPOINT_STAGES},
        "verify_s": verify_s,
        "restore_s": restore_s,
        "first_reply_s": reply_s,
        "criu_restore_s": criu_restore_s if criu_restore_s is not None else float("nan"),
        "restore_1thread_s": restore_1thread_s,
        "criu_restore_1thread_s": criu_restore_1thread_s if criu_restore_1thread_s is not None else float("nan"),
    }


def stage_key(stage: str) -> str:
    """The name of a checkpoint stage's figure in the results."""
    return f"stage_{stage}_s"


def restore_and_ask(
    store: SnapshotStore, snapshot_id: str, size_mb: int, started: float
) -> tuple[float, float, float | None]:
    """Restore the holder once, have it answer, kill it; return the seconds since `started` to each step, and
    CRIU's own restore time."""
    stdin_read, stdin_write = os.pipe()
    stdout_read, stdout_write = os.pipe()
    try:
        tree = store.restore_snapshot(snapshot_id, pipes={"stdin": stdin_read, "stdout": stdout_write}, verify="size")
    finally:
        os.close(stdin_read)
        os.close(stdout_write)
    restored = time.perf_counter() - started
    with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
        to_tree.write("go\n")
        to_tree.flush()
        answered = int(from_tree.readline())
    replied = time.perf_counter() - started
    tree.kill()
    assert answered == size_mb << 20
    return restored, replied, tree.criu_restore_s


@contextlib.contextmanager
def page_read_threads(count: int) -> Iterator[None]:
    """Have the patched CRIU read pages with `count` threads (CRIU_PAGE_READ_THREADS) while in this block."""
    before = os.environ.get(PAGE_READ_THREADS)
    os.environ[PAGE_READ_THREADS] = str(count)
    try:
        yield
    finally:
        if before is None:
            del os.environ[PAGE_READ_THREADS]
        else:
            os.environ[PAGE_READ_THREADS] = before


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its waited-for descendants so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measure_concurrent(store: SnapshotStore, size_mb: int, count: int) -> dict[str, float]:
    """Dump a process holding `size_mb` MB, then restore it `count` times at once; return the timings."""
    holder = start_holder(size_mb)
    try:
        manifest = store.take_snapshot(holder.pid, "bench", pipes={"stdin": 0, "stdout": 1})
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    own_before, children_before = cpu_seconds()
    started = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        timings = [
            t[:2] for t in pool.map(lambda _: restore_and_ask(store, manifest.id, size_mb, started), range(count))
        ]
    wall = time.perf_counter() - started
    own_after, children_after = cpu_seconds()
    store.delete(manifest.id)
    return {
        "image_mb": manifest.size_bytes / 1e6,
        "all_restored_s": max(restored for restored, _ in timings),
        "median_restored_s": statistics.median(restored for restored, _ in timings),
        "all_replied_s": wall,
        "helpers_cpu_s_per_restore": (children_after - children_before) / count,
        "caller_cpu_s_per_restore": (own_after - own_before) / count,
    }


def main() -> None:
    """Run the benchmark and print a table (or JSON)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="100,1000", help="MB of data each process holds")
    parser.add_argument("--runs", type=int, default=5, help="runs per size (median reported)")
    parser.add_argument("--concurrent", type=int, default=0, metavar="N", help="restore one image N times at once")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-", dir="/var/tmp") as root:
        store = SnapshotStore(Path(root))
        if args.concurrent:
            report_concurrent(store, args)
            return
        for size_mb in map(int, args.sizes.split(",")):
            runs = [measure(store, size_mb) for _ in range(args.runs)]
            median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
            results.append({"size_mb": size_mb, "runs": args.runs, **median})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"{'data':>7} {'RSS':>9} {'image':>9} {'CRIU dump':>10} {'published':>10} {'GB/s':>5} {'sha256':>8} "
        f"{'restore':>8} {'1st reply':>10}  runs"
    )
    for row in results:
        print(
            f"{row['size_mb']:>4} MB {row['rss_mb']:>6.0f} MB {row['image_mb']:>6.0f} MB "
            f"{row['criu_dump_s']:>9.2f}s {row['dump_s']:>9.2f}s {row['dump_gbps']:>5.2f} {row['verify_s']:>7.2f}s "
            f"{row['restore_s']:>7.2f}s {row['first_reply_s']:>9.2f}s"
            f"  {row['runs']}"
        )
        stages = {name: row[stage_key(name)] for name in CHECKPOINT_STAGES}
        print(f"        where the published time went: {describe_stages(stages)}")


def report_concurrent(store: SnapshotStore, args: argparse.Namespace) -> None:
    """Run the concurrent restores for each size and print a table (or JSON)."""
    results = []
    for size_mb in map(int, args.sizes.split(",")):
        runs = [measure_concurrent(store, size_mb, args.concurrent) for _ in range(args.runs)]
        median = {name: statistics.median(run[name] for run in runs) for name in runs[0]}
        results.append({"size_mb": size_mb, "concurrent": args.concurrent, "runs": args.runs, **median})
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'data':>7} {'image':>9} {'at once':>8} {'all restored':>13} {'all replied':>12} {'CPU/restore':>12}  runs")
    for row in results:
        cpu = row["helpers_cpu_s_per_restore"] + row["caller_cpu_s_per_restore"]
        print(
            f"{row['size_mb']:>4} MB {row['image_mb']:>6.0f} MB {row['concurrent']:>8} "
            f"{row['all_restored_s']:>12.2f}s {row['all_replied_s']:>11.2f}s {cpu:>11.3f}s  {row['runs']}"
        )


if __name__ == "__main__":
    main()
