"""Engine demo: checkpoint a process that did slow set-up work, then restore it twice at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from snapkernel_engine import SnapshotStore

WORKER = r"""
import sys, time
started = time.perf_counter()
table = [i * i for i in range(3_000_000)]   # the "slow setup"
setup_s = time.perf_counter() - started
print(f"setup done in {setup_s:.2f} s", flush=True)
for line in sys.stdin:
    print(f"pid {__import__('os').getpid()}: sum={sum(table)} after {line.strip()}", flush=True)
"""


def main() -> None:
    """Run the demo in a throwaway store."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-demo-") as root:
        store = SnapshotStore(root)
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        print("worker:", worker.stdout.readline().strip())
        manifest = store.take_snapshot(worker.pid, key="demo", pipes={"stdin": 0, "stdout": 1})
        worker.kill()
        worker.wait()
        print(
            f"snapshot {manifest.id}: {manifest.size_bytes / 1e6:.0f} MB image, "
            f"dumped in {manifest.dump_duration_s:.2f} s"
        )
        for attempt in (1, 2):
            stdin_read, stdin_write = os.pipe()
            stdout_read, stdout_write = os.pipe()
            started = time.perf_counter()
            tree = store.restore_snapshot(manifest.id, key="demo", pipes={"stdin": stdin_read, "stdout": stdout_write})
            os.close(stdin_read)
            os.close(stdout_write)
            with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
                to_tree.write(f"restore {attempt}\n")
                to_tree.flush()
                answer = from_tree.readline().strip()
            print(f"restored in {time.perf_counter() - started:.2f} s (host pid {tree.pid}): {answer}")
            tree.kill()


if __name__ == "__main__":
    main()
