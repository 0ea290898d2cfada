"""A process to checkpoint in tests: holds data, runs a thread and a child, answers on stdin."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time

size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 100
block = os.urandom(1 << 20)
data = bytearray(block * size_mb)
checksum = hashlib.sha256(data).hexdigest()
ticks = [0]


def tick() -> None:
    while True:
        ticks[0] += 1
        time.sleep(0.01)


threading.Thread(target=tick, daemon=True).start()
child = os.fork()
if child == 0:
    while True:
        time.sleep(0.1)


def report() -> dict[str, object]:
    before = ticks[0]
    time.sleep(0.1)
    reaped, _ = os.waitpid(child, os.WNOHANG)
    return {
        "pid": os.getpid(),
        "proc_self": int(os.readlink("/proc/self")),
        "checksum": hashlib.sha256(data).hexdigest(),
        "thread_alive": ticks[0] > before,
        "child_alive": reaped == 0 and os.path.exists(f"/proc/{child}"),
        "child": child,
    }


print(json.dumps({"ready": True, "checksum": checksum}), flush=True)
for line in sys.stdin:
    command = line.strip()
    if command == "report":
        print(json.dumps(report()), flush=True)
    elif command.startswith("rewrite "):  # new random bytes over the first N MB: a dump after it differs there
        size = int(command.split()[1]) << 20
        data[:size] = os.urandom(size)
        print(json.dumps({"checksum": hashlib.sha256(data).hexdigest()}), flush=True)
    elif command == "exit":
        break
