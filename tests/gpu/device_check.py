"""GPU checks for a lent NVIDIA machine (run through device_check.sh): engine, kernel (its build's stages),
timings, sessions; each prints PASS or FAIL rows."""

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
from snapkernel_engine.privileges import current
from snapkernel_engine.stages import StageClock, describe_stages

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_TARGET_S = 8.0  # the GPU example's checkpoint and dump (issue 24)
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
    clock = StageClock()
    manifest = store.take_snapshot(holder.pid, "gpu", pipes={"stdin": 0, "stdout": 1}, leave_running=True, clock=clock)
    print(f"checkpoint: {time.perf_counter() - started:.2f} s, image {manifest.size_bytes / 1e9:.2f} GB, "
          f"CUDA processes {manifest.cuda_pids}")  # fmt: skip
    print(f"checkpoint stages: {describe_stages(clock.seconds)}")
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


NOTEBOOK = REPO / os.environ.get("DEVICE_NOTEBOOK", "examples/gpu_setup.ipynb")
# CUDA work whose result depends on every weight: a forward pass on the model's own device, and the weights' sum.
CHECK_CODE = (
    "with torch.no_grad():\n"
    "    _probe = torch.ones(4, model[0].in_features, device=next(model.parameters()).device)\n"
    "    _weights = sum(p.double().sum().item() for p in model.parameters())\n"
    "    print(repr(model(_probe).double().sum().item()), repr(_weights))"
)


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


async def kernel_check() -> None:
    """(b) the notebook's snapshot built, and its kernel restored through jupyter_client."""
    from jupyter_snapkernel.notebook.builder import StagesTimed, build_snapshot
    from jupyter_snapkernel.paths import open_store

    label = os.environ.get("SESSIONS_LABEL", "")
    mode = current().mode
    print(f"== (b{label}) kernel: {NOTEBOOK.name} built, then restored through jupyter_client, in {mode} mode "
          f"({current().detail})", flush=True)  # fmt: skip
    expected = os.environ.get("EXPECT_MODE", mode)
    print(f"(mode{label}) {verdict(mode == expected)} {mode} (expected {expected})")
    timed: list[dict[str, float]] = []
    started = time.perf_counter()
    manifest = build_snapshot(
        NOTEBOOK, open_store(), progress=lambda event: timed.append(event.seconds) if isinstance(event, StagesTimed)
        else None, from_top=True,
    )  # fmt: skip
    print(f"build: {time.perf_counter() - started:.1f} s, snapshot {manifest.id}, "
          f"{manifest.size_bytes / 1e9:.2f} GB image, CUDA processes {manifest.cuda_pids}")  # fmt: skip
    for stages in timed:
        print(f"build stages: {describe_stages(stages)}")
    last = timed[-1]
    checkpoint_s = StageClock(last).checkpoint_s()
    print(f"(b{label}-build) {verdict(checkpoint_s <= CHECKPOINT_TARGET_S)} checkpoint of the last point "
          f"{checkpoint_s:.2f} s (target <= {CHECKPOINT_TARGET_S:g} s; CRIU dump {last.get('criu_dump', 0):.2f} s, "
          f"GPU to host {last.get('gpu_to_host', 0):.2f} s)")  # fmt: skip
    session = await one_session(cold=False)
    print(f"(b{label}) {verdict(session['start'] == 'restored' and session['ok'])} {session}")


async def one_session(cold: bool) -> dict[str, object]:
    """Start a kernel of the notebook (restored, or `cold`), run its setup cells' requests and the CUDA check."""
    from jupyter_client.manager import AsyncKernelManager

    from jupyter_snapkernel.launch.headless import describe_start, kernel_env, notebook_to_run
    from jupyter_snapkernel.notebook.setup_section import normalise, setup_section_of

    book = notebook_to_run(NOTEBOOK)
    section = setup_section_of(book)
    sources = [normalise(cell.source) for cell in book.cells if cell.cell_type == "code"]
    setup = sources[: len(section.cells) if section else 0]
    manager = AsyncKernelManager(kernel_name="snapkernel")
    started = time.perf_counter()
    await manager.start_kernel(env=kernel_env(NOTEBOOK, cold), cwd=str(NOTEBOOK.parent))
    client = manager.client()
    client.start_channels()
    outputs: list[str] = []
    try:
        await client.wait_for_ready(timeout=300)
        for source in setup:
            await client.execute_interactive(source, timeout=600)
        hook = lambda m: outputs.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None  # noqa: E731
        reply = await client.execute_interactive(CHECK_CODE, timeout=600, output_hook=hook)
        pid = manager.provisioner.pid if manager.provisioner is not None else None
        start = describe_start(manager)
        return {
            "start": start["start"], "reason": start.get("reason"), "ok": reply["content"]["status"] == "ok",
            "checksum": "".join(outputs).strip(), "seconds": round(time.perf_counter() - started, 2),
            "transport": manager.transport, "netns": os.stat(f"/proc/{pid}/ns/net").st_ino if pid else None,
        }  # fmt: skip
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


async def sessions_check(label: str) -> None:
    """(d) two sessions of the notebook at once: both restored, both run CUDA work, checksums equal a cold run's."""
    print(f"== (d{label}) two sessions at once, as {os.environ.get('USER') or os.getuid()}", flush=True)
    cold = await one_session(cold=True)
    first, second = await asyncio.gather(one_session(cold=False), one_session(cold=False))
    for name, session in (("cold", cold), ("session 1", first), ("session 2", second)):
        print(f"{name}: {session}")
    restored = first["start"] == second["start"] == "restored"
    same = cold["checksum"] == first["checksum"] == second["checksum"] != ""
    apart = first["netns"] != second["netns"] or os.environ.get("SNAPKERNEL_RESTORE_NETWORK") == "host"
    print(f"(d{label}) {verdict(restored and same and apart and first['ok'] and second['ok'])} "
          f"restored={restored} checksums_equal={same} own_network_each={apart}")  # fmt: skip


async def timings_check() -> None:
    """(c) launch to the first reply after the setup cells: cold, restored, restored from a spare (medians)."""
    from jupyter_snapkernel import env_names
    from jupyter_snapkernel.launch.headless import _wait_for_spare, time_to_first_reply
    from jupyter_snapkernel.launch.spares import spare_pool

    print("== (c) time from launch to the first reply after the setup cells", flush=True)
    runs = int(os.environ.get("GPU_RUNS", "3"))
    os.environ[env_names.SPARE_KERNELS] = "0"
    cold = [await time_to_first_reply(NOTEBOOK, cold=True) for _ in range(runs)]
    plain = [await time_to_first_reply(NOTEBOOK, cold=False) for _ in range(runs)]
    os.environ[env_names.SPARE_KERNELS] = "1"
    spared = []
    for _ in range(runs + 1):  # the first start has no spare to take yet
        spared.append(await time_to_first_reply(NOTEBOOK, cold=False))
        await _wait_for_spare(timeout=120)
    spare_pool.discard_all()
    cold_s, plain_s, spare_s = (statistics.median(s for s, _ in runs_) for runs_ in (cold, plain, spared[1:]))
    print(json.dumps({"cold_s": [round(s, 2) for s, _ in cold], "restored_s": [round(s, 2) for s, _ in plain],
                      "spare_s": [round(s, 2) for s, _ in spared[1:]],
                      "starts": [start for _, start in plain + spared[1:]]}))  # fmt: skip
    print(f"(c) {verdict(cold_s / spare_s >= 10)} with a spare: {spare_s:.2f} s, {cold_s / spare_s:.1f}x (target 10x)")
    print(f"(c) {verdict(cold_s / plain_s >= 5)} without: {plain_s:.2f} s, {cold_s / plain_s:.1f}x (target 5x); "
          f"cold {cold_s:.2f} s")  # fmt: skip


if __name__ == "__main__":
    parts = sys.argv[1:] or ["engine", "kernel", "timings", "sessions"]
    if "engine" in parts:
        engine_check()
    if "kernel" in parts:
        asyncio.run(kernel_check())
    if "timings" in parts:
        asyncio.run(timings_check())
    if "sessions" in parts:
        asyncio.run(sessions_check(os.environ.get("SESSIONS_LABEL", "")))
