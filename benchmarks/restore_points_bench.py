"""Restore points: what an edit of the last setup cell costs, against starting and building from the top.

The notebook: setup cell A loads 400 MB of seeded random bytes and takes 4 s (padded to it, so that the load
takes as long on any machine); B and C are light and both tagged `snapshot` (C, the last tagged cell, ends the
setup), so the build leaves a restore point after each of A (it ran over a second), B and C; one cell follows
the setup. Everything goes through the real CLI with real CRIU, with automatic builds off, in a fresh store:

- the chain's bytes (`list --json`) against one full image of the same setup, built in a second store from a
  copy of the notebook with only C tagged and restore points off (SNAPKERNEL_RESTORE_POINT_SECONDS=0);
- after C is edited, `jupyter snapkernel bench --no-spares` (the time to the reply of the cell after the
  setup when Run All sends the setup cells and that cell, as `make bench` times the examples): cold, running
  A, B and C, against a start that restores the point after B and runs only C;
- then, for each run, C edited again: `build` (it restores the build kernel from the point after B and runs
  only C) against `build --from-top` of the same cells (all three again, each point checkpointed again).

`python benchmarks/restore_points_bench.py [--runs N]` prints the result as JSON; `make bench` puts it in
benchmarks/results/latest.json under "restore_points".
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

JUPYTER = Path(sys.executable).with_name("jupyter")
LOAD_MB = 400
LOAD_S = 4.0
TARGET_SPEEDUP = 5.0  # the edited start and the rebuild, each against its from-the-top counterpart

LOAD = (
    "import time\n"
    "import numpy as np\n"
    "started = time.perf_counter()\n"
    f"table = np.random.default_rng(20).integers(0, 256, {LOAD_MB}_000_000, dtype=np.uint8)\n"
    f"time.sleep(max(0.0, {LOAD_S} - (time.perf_counter() - started)))\n"
    "print('loaded', table.nbytes)"
)
COUNTS = "counts = np.bincount(table[:1_000_000], minlength=256)\nprint('most common byte', int(counts.argmax()))"
SUMMARY = "summary = {'mean': float(table[:1_000_000].mean()), 'variant': 0}\nprint('summary', summary)"
AFTER = "print('after the setup', summary['variant'], int(counts.sum()))"


def write_notebook(path: Path, tagged: tuple[int, ...], variant: int = 0) -> Path:
    """The bench's notebook: setup cells A, B, C (C's `variant` set), the cells in `tagged` tagged `snapshot`."""
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "snapkernel", "display_name": "Python 3 (snapshots)", "language": "python"}
    sources = [LOAD, COUNTS, SUMMARY.replace("'variant': 0", f"'variant': {variant}"), AFTER]
    for index, source in enumerate(sources):
        cell = nbformat.v4.new_code_cell(source)
        if index in tagged:
            cell.metadata["tags"] = ["snapshot"]
        book.cells.append(cell)
    nbformat.write(book, path)
    return path


def cli(store: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[str, str, float]:
    """Run `jupyter snapkernel --store STORE ARGS` in `cwd` with automatic builds off; its stdout, its stderr and
    its wall time. Raise with its output when it fails."""
    environment = {**os.environ, "SNAPKERNEL_AUTO_BUILD": "0", "SNAPKERNEL_RESTORE_POINT_SECONDS": "1", **(env or {})}
    command = [str(JUPYTER), "snapkernel", "--store", str(store), *args]
    started = time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=1800, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"`jupyter snapkernel {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout, result.stderr, elapsed


def cells_run(stderr: str) -> list[str]:
    """The setup cells a build's progress lines say it ran ("running setup cell 3/3", …)."""
    return [line.split("] ", 1)[1] for line in stderr.splitlines() if "] running setup cell" in line]


def phases(stdout: str, stderr: str) -> dict[str, float]:
    """Where a build's time went, from its progress lines: restoring the build kernel, running cells, checkpoints;
    and the time the CLI itself reports ("built in"), which leaves out its start (reading the notebook)."""
    timed = []
    for line in stderr.splitlines():
        if line.startswith("[") and "s] " in line:
            seconds, text = line[1:].split("s] ", 1)
            timed.append((float(seconds), text))
    kinds = {"restoring the build kernel": "restore_s", "running setup": "cells_s", "checkpointing": "checkpoint_s"}
    spent = dict.fromkeys(kinds.values(), 0.0)
    for (at, text), (then, _) in itertools.pairwise(timed):
        kind = next((name for prefix, name in kinds.items() if text.startswith(prefix)), None)
        if kind is not None:
            spent[kind] += then - at
    spent["built_in_s"] = float(stdout.rsplit("built in ", 1)[1].split(" s", 1)[0])
    return spent


def snapshots(store: Path, cwd: Path) -> list[dict[str, Any]]:
    """`list --json`: the store's snapshots."""
    rows: list[dict[str, Any]] = json.loads(cli(store, "list", "--json", cwd=cwd)[0])
    return rows


def chain_disk(folder: Path, store: Path, book: Path) -> dict[str, Any]:
    """The chain's bytes as built (one row per restore point), and one full image of the same setup."""
    rows = sorted(snapshots(store, folder), key=lambda row: int(row["labels"]["cells"]))
    if [row["parent"] is None for row in rows] != [True, False, False]:
        raise RuntimeError(f"expected a full image and two incremental restore points, the store holds {rows}")
    single = folder / "single"
    single.mkdir()
    write_notebook(single / book.name, tagged=(2,))
    _, _, single_build_s = cli(
        single / "store", "build", "--quiet", str(single / book.name), cwd=single,
        env={"SNAPKERNEL_RESTORE_POINT_SECONDS": "0"},
    )  # fmt: skip
    images = snapshots(single / "store", single)
    if len(images) != 1:
        raise RuntimeError(f"restore points off, yet the build left {len(images)} snapshots")
    chain_bytes = sum(int(row["size_bytes"]) for row in rows)
    single_bytes = int(images[0]["size_bytes"])
    return {
        "points": [
            {"cells": int(row["labels"]["cells"]), "size_bytes": int(row["size_bytes"]), "full": row["parent"] is None}
            for row in rows
        ],
        "chain_bytes": chain_bytes,
        "full_image_bytes": single_bytes,
        "ratio": round(chain_bytes / single_bytes, 3),
        "single_image_build_s": round(single_build_s, 2),
    }


def edited_starts(folder: Path, store: Path, book: Path, runs: int) -> dict[str, Any]:
    """With C edited: which point a start restores (`run --json`), then cold against restored starts (`bench`)."""
    write_notebook(book, tagged=(1, 2), variant=1)
    stdout, _, _ = cli(store, "run", "--json", "--output", str(folder / "edited.out.ipynb"), str(book), cwd=folder)
    summary = json.loads(stdout.strip().splitlines()[-1])
    if (summary["start"], summary["restored_cells"], summary["setup_cells"]) != ("restored", 2, 3):
        raise RuntimeError(f"the edited notebook did not restore the point after setup cell 2: {summary}")
    result = json.loads(cli(store, "bench", str(book), "--runs", str(runs), "--json", "--no-spares", cwd=folder)[0])
    return {
        "restored_cells": summary["restored_cells"],
        "setup_cells": summary["setup_cells"],
        "cold_s": result["cold_s"],
        "edited_s": result["restored_s"],
        "ratio": round(result["cold_s"] / result["restored_s"], 2),
        "cold_runs_s": result["cold_runs_s"],
        "edited_runs_s": result["restored_runs_s"],
    }


def rebuilds(folder: Path, store: Path, book: Path, runs: int) -> dict[str, Any]:
    """For each run, C edited once more: `build` (on from the point after B) then `build --from-top`."""
    rebuild_runs, full_runs, rebuild_phases, full_phases = [], [], [], []
    for run in range(runs):
        write_notebook(book, tagged=(1, 2), variant=2 + run)
        stdout, stderr, rebuild_s = cli(store, "build", str(book), cwd=folder)
        if "from the restore point after setup cell 2" not in stderr or cells_run(stderr) != ["running setup cell 3/3"]:
            raise RuntimeError(f"the rebuild did not go on from the point after setup cell 2:\n{stderr}")
        rebuild_runs.append(rebuild_s)
        rebuild_phases.append(phases(stdout, stderr))
        stdout, stderr, full_s = cli(store, "build", "--from-top", str(book), cwd=folder)
        if len(cells_run(stderr)) != 3:
            raise RuntimeError(f"`build --from-top` did not run the three setup cells:\n{stderr}")
        full_runs.append(full_s)
        full_phases.append(phases(stdout, stderr))
    # The build's own time (its "built in"): what a server's background build takes. The command's wall time
    # adds the start of a Python process to both.
    full = statistics.median(phase["built_in_s"] for phase in full_phases)
    rebuild = statistics.median(phase["built_in_s"] for phase in rebuild_phases)
    return {
        "full_s": round(full, 2),
        "rebuild_s": round(rebuild, 2),
        "ratio": round(full / rebuild, 2),
        "full_command_s": round(statistics.median(full_runs), 2),
        "rebuild_command_s": round(statistics.median(rebuild_runs), 2),
        "command_ratio": round(statistics.median(full_runs) / statistics.median(rebuild_runs), 2),
        "full_runs_s": [round(seconds, 2) for seconds in full_runs],
        "rebuild_runs_s": [round(seconds, 2) for seconds in rebuild_runs],
        "full_phases_s": median_phases(full_phases),
        "rebuild_phases_s": median_phases(rebuild_phases),
    }


def median_phases(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each phase over the runs, rounded."""
    return {name: round(statistics.median(run[name] for run in runs), 2) for name in runs[0]}


def measure_restore_points(runs: int) -> dict[str, Any]:
    """Build the notebook's chain, then time edited starts and rebuilds against the same from the top."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-points-", dir="/var/tmp") as tmp:
        folder = Path(tmp)
        store = folder / "store"
        book = write_notebook(folder / "restore_points.ipynb", tagged=(1, 2))
        _, stderr, first_build_s = cli(store, "build", str(book), cwd=folder)
        if len(cells_run(stderr)) != 3:
            raise RuntimeError(f"the first build did not run the three setup cells:\n{stderr}")
        disk = chain_disk(folder, store, book)
        start = edited_starts(folder, store, book, runs)
        build = rebuilds(folder, store, book, runs)
    return {
        "runs": runs,
        "notebook": f"setup: A loads {LOAD_MB} MB in {LOAD_S:g} s; B and C light, tagged; one cell after; C edited",
        "measured": "start: seconds to the reply of the cell after the setup as Run All sends them (`jupyter "
        "snapkernel bench --no-spares`), cold against restoring the point after B and running C; build: wall "
        "seconds of `build` (on from the point after B) against `build --from-top`; disk: `list --json` sizes "
        "of the chain's three snapshots against one full image built with restore points off",
        "target_speedup": TARGET_SPEEDUP,
        "first_build_s": round(first_build_s, 2),
        "start": start,
        "build": build,
        "disk": disk,
    }


def main() -> None:
    """Measure and print the result as JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="starts and rebuilds of each kind (medians reported)")
    args = parser.parse_args()
    print(json.dumps(measure_restore_points(args.runs), indent=2))


if __name__ == "__main__":
    main()
