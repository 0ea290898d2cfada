"""GPU checks for a lent NVIDIA machine (run through device_check.sh): engine, kernel, timings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from snapkernel_engine import SnapshotStore
from snapkernel_engine.cuda import system_driver

REPO = Path(__file__).resolve().parents[2]
GPU_HOLDER = r"""
import sys, torch
torch.manual_seed(1234)
# 18 x 256 MiB of float32 = 4.5 GiB on the GPU
tensors = [torch.randn(64 * 1024 * 1024, device='cuda') for _ in range(18)]
def checksum():
    return float(sum(t.double().sum().item() for t in tensors))
torch.cuda.synchronize()
print(f'ready {checksum()!r} {sum(t.numel() * 4 for t in tensors)}', flush=True)
for line in sys.stdin:
    print(f'checksum {checksum()!r} pid {__import__("os").getpid()}', flush=True)
"""


def engine_check() -> None:
    """(a) a torch process holding >= 4 GB of CUDA tensors, checkpointed, restored twice at once."""
    print("== (a) engine: CUDA tensors through a checkpoint and two simultaneous restores", flush=True)
    assert system_driver() is not None, "no CUDA driver with the checkpoint API"
    store = SnapshotStore(tempfile.mkdtemp(prefix="gpu-store-"))
    holder = subprocess.Popen(
        [sys.executable, "-c", GPU_HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    _, original, size = holder.stdout.readline().split()
    print(f"holder pid {holder.pid}: {int(size) / 2**30:.1f} GiB on the GPU, checksum {original}")
    started = time.perf_counter()
    manifest = store.take_snapshot(holder.pid, "gpu", pipes={"stdin": 0, "stdout": 1}, leave_running=True)
    print(f"checkpoint: {time.perf_counter() - started:.2f} s, image {manifest.size_bytes / 1e9:.2f} GB, "
          f"CUDA processes {manifest.cuda_pids}")  # fmt: skip
    holder.stdin.write("again\n")
    holder.stdin.flush()
    print("original after the checkpoint:", holder.stdout.readline().strip())
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()

    results: dict[int, str] = {}

    def restore_one(index: int) -> None:
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        begun = time.perf_counter()
        # CUDA binds an abstract unix socket named after the process: each copy needs its own network.
        pipes = {"stdin": stdin_read, "stdout": stdout_write}
        tree = store.restore_snapshot(manifest.id, key="gpu", pipes=pipes, own_network=True)
        restore_s = time.perf_counter() - begun
        os.close(stdin_read)
        os.close(stdout_write)
        with os.fdopen(stdin_write, "w") as to_tree, os.fdopen(stdout_read) as from_tree:
            to_tree.write("check\n")
            to_tree.flush()
            answer = from_tree.readline().strip()
        results[index] = f"restore {index}: {restore_s:.2f} s, host pid {tree.pid}, {answer}"
        tree.kill()

    threads = [threading.Thread(target=restore_one, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in sorted(results):
        print(results[index])
    sums = {line.split("checksum ")[1].split()[0] for line in results.values()}
    ok = sums == {original} and len(results) == 2
    print("(a)", "PASS" if ok else "FAIL", f"checksums {sorted(sums)} vs {original}")


async def kernel_check() -> None:
    """(b) the gpu_setup notebook's kernel restored through jupyter_client; (c) cold vs restored."""
    from jupyter_client.manager import AsyncKernelManager

    from jupyter_snapkernel.launch.headless import time_to_first_reply
    from jupyter_snapkernel.launch.provisioner import RestoredKernelProcess
    from jupyter_snapkernel.notebook.builder import build_snapshot
    from jupyter_snapkernel.paths import open_store

    notebook = REPO / "examples" / "gpu_setup.ipynb"
    print("== (b) kernel: examples/gpu_setup.ipynb restored through jupyter_client", flush=True)
    started = time.perf_counter()
    manifest = build_snapshot(notebook, open_store(), progress=lambda event: None)
    print(f"build: {time.perf_counter() - started:.1f} s, snapshot {manifest.id}, "
          f"{manifest.size_bytes / 1e9:.2f} GB image, CUDA processes {manifest.cuda_pids}")  # fmt: skip
    manager = AsyncKernelManager(kernel_name="snapkernel")
    await manager.start_kernel(env={**os.environ, "JPY_SESSION_NAME": str(notebook)}, cwd=str(notebook.parent))
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=120)
        restored = isinstance(manager.provisioner.process, RestoredKernelProcess)
        outputs: list[str] = []
        code = "with torch.no_grad():\n    print(model(torch.ones(4, 8192, device=device)).sum().item(), weights_gb)"
        reply = await client.execute_interactive(
            code, timeout=120,
            output_hook=lambda m: outputs.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
        )  # fmt: skip
        print(f"restored={restored} status={reply['content']['status']} output={''.join(outputs).strip()!r}")
        print("(b)", "PASS" if restored and reply["content"]["status"] == "ok" and outputs else "FAIL")
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)

    print("== (c) time from launch to the first reply after the setup cells", flush=True)
    runs = int(os.environ.get("GPU_RUNS", "3"))
    cold = [await time_to_first_reply(notebook, cold=True) for _ in range(runs)]
    warm = [await time_to_first_reply(notebook, cold=False) for _ in range(runs)]
    cold_s = statistics.median(seconds for seconds, _ in cold)
    warm_s = statistics.median(seconds for seconds, _ in warm)
    print(json.dumps({"cold_runs_s": [round(s, 2) for s, _ in cold], "restored_runs_s": [round(s, 2) for s, _ in warm],
                      "starts": [start for _, start in warm]}))  # fmt: skip
    print(f"(c) cold {cold_s:.2f} s, restored {warm_s:.2f} s, ratio {cold_s / warm_s:.1f}x")


if __name__ == "__main__":
    if "kernel" not in sys.argv[1:]:
        engine_check()
    if "engine" not in sys.argv[1:]:
        asyncio.run(kernel_check())
