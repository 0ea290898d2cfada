"""Snapshots through an OCI registry: push and pull throughput, a rebuild's upload, and pull + restore against cold.

A real registry (Debian's docker-registry, TLS and htpasswd, on 127.0.0.1, as tests/registry_server.py starts it),
the torch example, the real CLI and the engine's push and pull:

- push: the torch example's snapshot (with its restore point) into a repository of its own per run, so every
  blob is sent; pull: it into an empty store per run. Throughput is bytes moved over wall time.
- rebuild: the torch example built whole (restore points off) and pushed, its last setup cell changed by one
  line, built whole again and pushed to the same repository: the share of the second push that was sent.
- start: `jupyter snapkernel run` of the torch example cold (all cells, setup included) against `pull
  --notebook` into an empty store followed by a restored `run`, and against a restored `run` alone.

`python benchmarks/registry_bench.py [--runs N]` prints JSON; `make bench` puts it under "registry".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' registry serves the benchmark too
from jupyter_snapkernel.paths import open_store  # noqa: E402
from snapkernel_engine.registry.client import Reference  # noqa: E402
from snapkernel_engine.registry.transfer import Transfer, find_snapshot, pull_snapshot, push_snapshot  # noqa: E402
from tests.registry_server import Registry, running_registry  # noqa: E402

JUPYTER = Path(sys.executable).with_name("jupyter")
TORCH = REPO / "examples" / "torch_setup.ipynb"


def snapkernel(store: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run `jupyter snapkernel --store STORE ARGS…`; return its stdout and wall time (raise on failure)."""
    started = time.perf_counter()
    result = subprocess.run(
        [str(JUPYTER), "snapkernel", "--store", str(store), *args], capture_output=True, text=True, timeout=900,
        env={**os.environ, "SNAPKERNEL_AUTO_BUILD": "0", "SNAPKERNEL_SPARE_KERNELS": "0", **(env or {})}, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"snapkernel {' '.join(args)} failed: {result.stderr[-2000:]}")
    return result.stdout, time.perf_counter() - started


def built(store: Path, notebook: Path, env: dict[str, str] | None = None) -> str:
    """Build a notebook's snapshot; return its id."""
    output, _ = snapkernel(store, "build", "--quiet", str(notebook), env=env)
    return output.split()[1].rstrip(":")


def run_total_s(store: Path, notebook: Path, *args: str) -> tuple[float, str]:
    """`run --json`: the run's total seconds (launch to the last cell's reply) and how it started."""
    output, _ = snapkernel(store, "run", "--json", str(notebook), *args)
    summary = json.loads(output.splitlines()[-1])
    return float(summary["total_s"]), str(summary["start"])


def transfer_figures(transfer: Transfer) -> dict[str, float]:
    """Bytes, seconds and MB/s of one push or pull."""
    return {
        "bytes": transfer.moved_bytes,
        "seconds": round(transfer.seconds, 3),
        "mb_per_s": round(transfer.throughput / 1e6, 1),
    }


def edited(notebook: Path, folder: Path) -> Path:
    """A copy of the notebook whose last setup cell prints other words (one line changed)."""
    book = json.loads(notebook.read_text())
    for cell in book["cells"]:
        if "snapshot" in cell.get("metadata", {}).get("tags", []):
            cell["source"] = "".join(cell["source"]).replace('print(f"setup took', 'print(f"the setup took')
    copy = folder / notebook.name
    copy.write_text(json.dumps(book))
    return copy


def rebuild_upload(registry: Registry, folder: Path) -> dict[str, Any]:
    """Two whole builds of the torch example, the second after a one-line edit: what each push sent."""
    whole = {"SNAPKERNEL_RESTORE_POINT_SECONDS": "0"}
    store = folder / "whole"
    reference = Reference.parse(registry.repository("bench/rebuild"))
    first = push_snapshot(open_store(store), built(store, TORCH, whole), reference)
    (folder / "edit").mkdir()
    second = push_snapshot(open_store(store), built(store, edited(TORCH, folder / "edit"), whole), reference)
    return {
        "first_bytes": first.moved_bytes,
        "second_bytes": second.moved_bytes,
        "second_total_bytes": second.total_bytes,
        "share": round(second.moved_bytes / first.moved_bytes, 3),
    }


def one_run(registry: Registry, folder: Path, builder: Path, snapshot: str, index: int) -> dict[str, Any]:
    """Push into a fresh repository, pull into an empty store, then time the starts."""
    reference = Reference.parse(registry.repository(f"bench/torch-{index}"))
    pushed = push_snapshot(open_store(builder), snapshot, reference)
    found = find_snapshot(reference.at(digest=pushed.digest))
    assert found is not None
    pulled = pull_snapshot(open_store(folder / f"pulled-{index}"), found)
    node = folder / f"node-{index}"
    _, pull_s = snapkernel(node, "pull", "--quiet", "--notebook", str(TORCH), str(reference))
    restored_s, how = run_total_s(node, TORCH)
    if how != "restored":
        raise RuntimeError(f"the run after the pull started {how}")
    cold_s, _ = run_total_s(node, TORCH, "--cold")
    return {
        "push": transfer_figures(pushed),
        "pull": transfer_figures(pulled),
        "pull_s": round(pull_s, 3),
        "restored_s": restored_s,
        "cold_s": cold_s,
    }


def measure_registry(runs: int = 3) -> dict[str, Any]:
    """Every figure of the registry part (medians over `runs`)."""
    folder = Path(tempfile.mkdtemp(prefix="snapkernel-registry-bench-"))
    try:
        with running_registry(folder / "registry") as registry:
            os.environ.update(registry.env())
            builder = folder / "builder"
            snapshot = built(builder, TORCH)
            samples = [one_run(registry, folder, builder, snapshot, index) for index in range(runs)]
            rebuild = rebuild_upload(registry, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    def median(*path: str) -> float:
        values = []
        for sample in samples:
            value: Any = sample
            for key in path:
                value = value[key]
            values.append(float(value))
        return round(statistics.median(values), 3)

    chain_bytes = samples[0]["push"]["bytes"]
    pull_and_restore = median("pull_s") + median("restored_s")
    return {
        "runs": runs,
        "snapshot_bytes": chain_bytes,
        "push_mb_per_s": median("push", "mb_per_s"),
        "push_s": median("push", "seconds"),
        "pull_mb_per_s": median("pull", "mb_per_s"),
        "pull_s": median("pull", "seconds"),
        "cli_pull_s": median("pull_s"),
        "restored_s": median("restored_s"),
        "cold_s": median("cold_s"),
        "pull_and_restore_s": round(pull_and_restore, 3),
        "pull_and_restore_ratio": round(median("cold_s") / pull_and_restore, 2),
        "rebuild": rebuild,
        "samples": samples,
    }


def main() -> int:
    """Print the registry figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (medians are reported)")
    print(json.dumps(measure_registry(parser.parse_args().runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
