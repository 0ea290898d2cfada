"""`make bench`: each figure beside its baseline, measured in one run; writes results/latest.json and latest.png.

Seven parts: the engine alone (dump end to end and by stage beside CRIU's own dump, sha256 and restore of
processes holding 100 MB and 1 GB);
`jupyter snapkernel bench` of the example notebooks (cold against restored, with and without spare
kernels); 16 sessions of one notebook started at once through a real `jupyter server`, restored and
cold; as root with a machine-wide install, `benchmarks/privilege_modes.py`; and restore points
(`benchmarks/restore_points_bench.py`): the start and the rebuild after an edit of the last setup
cell against the same from the top, and the chain's bytes against one full image; and editors
(`benchmarks/editors_bench.py`): a 10-run papermill sweep of the torch example through a bound
kernelspec, and its argv run as VS Code runs it, restored against cold; and the registry
(`benchmarks/registry_bench.py`): push, pull, a rebuild's upload, and a pull and restore against cold.

`--only PART` (repeatable) runs only those parts and merges them into the folder's latest.json (the
other parts keep their figures, and the table and plot show them all).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from copy_floor import copy_floor, floor_name
from editors_bench import measure_editors
from engine_bench import measure, stage_key
from registry_bench import measure_registry
from restore_points_bench import measure_restore_points

from jupyter_snapkernel.launch.headless import notebook_to_run
from jupyter_snapkernel.notebook.setup_section import normalise, setup_section_of
from snapkernel_engine import SnapshotError, SnapshotStore
from snapkernel_engine.criu import criu_version, find_criu
from snapkernel_engine.stages import CHECKPOINT_STAGES, SHOWN_FROM_S, STAGES

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' harness of a real jupyter server serves the benchmark too
from tests.servers import LocalServer  # noqa: E402

EXAMPLES = REPO / "examples"
JUPYTER = Path(sys.executable).with_name("jupyter")
ENGINE_SIZES_MB = (100, 1000)
NOTEBOOKS = ("numpy_setup.ipynb", "torch_setup.ipynb")
CONCURRENT_NOTEBOOK = "numpy_setup.ipynb"
TARGET_GBPS = 3.0  # restore throughput the engine aims at (issue 11)
BUILD_TARGET_GBPS = 1.0  # a build end to end, or within this of CRIU's own dump (issue 24)
BUILD_TARGET_OVER_CRIU = 1.5
PARTS = ("engine", "notebooks", "concurrent", "privilege_modes", "restore_points", "editors", "registry")


def command_output(command: list[str]) -> str | None:
    """Stdout of a short command, stripped; None when it cannot run or fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False, cwd=REPO)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_commit() -> str | None:
    """The short commit of the checkout, with "-dirty" when the tree differs from it."""
    commit = command_output(["git", "rev-parse", "--short", "HEAD"])
    if commit is None:
        return None
    changes = command_output(["git", "--no-optional-locks", "status", "--porcelain"])
    return f"{commit}-dirty" if changes else commit


def machine_facts() -> dict[str, Any]:
    """CPU model, cores, memory, kernel release, CRIU and GPU of this machine."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")), "")
    meminfo = Path("/proc/meminfo").read_text()
    mem_kb = next(int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:"))
    try:
        binary = find_criu()
        criu: dict[str, Any] = {"path": binary, "version": ".".join(map(str, criu_version(binary)))}
    except SnapshotError as error:
        criu = {"path": None, "version": None, "error": str(error)}
    gpu = "none"
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"]
        gpu = command_output(query) or "nvidia-smi failed"
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb * 1024 / 1e9, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "criu": criu,
        "gpu": gpu,
    }


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over the runs."""
    return {name: statistics.median(run[name] for run in runs) for name in runs[0]}


def engine_part(runs: int) -> list[dict[str, Any]]:
    """engine_bench.measure for each size: medians, and the restore throughput in GB/s."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-", dir="/var/tmp") as root:
        store = SnapshotStore(Path(root))
        for size_mb in ENGINE_SIZES_MB:
            median = median_of([measure(store, size_mb) for _ in range(runs)])
            gbps = median["image_mb"] / median["restore_s"] / 1000
            rows.append({"size_mb": size_mb, "runs": runs, **median, "restore_gbps": round(gbps, 2)})
    # The floor of the largest restore, in the same run: its pages copied from the page cache into fresh memory.
    largest = rows[-1]
    largest.update(copy_floor(int(largest["image_mb"] * 1e6), runs=max(runs, 5)))
    largest["criu_restore_over_floor"] = round(largest["criu_restore_s"] / largest[floor_name(2)], 2)
    return rows


def snapkernel(store: Path, *args: str, timeout: float = 1800) -> str:
    """Run `jupyter snapkernel --store STORE ARGS` from the venv; return its stdout, or raise with its output."""
    command = [str(JUPYTER), "snapkernel", "--store", str(store), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`jupyter snapkernel {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def notebook_part(runs: int) -> list[dict[str, Any]]:
    """Build each example's snapshot, then bench it with and without spare kernels (cold runs in the same call)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-store-", dir="/var/tmp") as store:
        for name in NOTEBOOKS:
            notebook = str(EXAMPLES / name)
            started = time.perf_counter()
            snapkernel(Path(store), "build", "--quiet", notebook)
            build_s = time.perf_counter() - started
            row: dict[str, Any] = {"notebook": name, "runs": runs, "build_s": round(build_s, 2)}
            for key, extra in (("spares", []), ("no_spares", ["--no-spares"])):
                result = json.loads(snapkernel(Path(store), "bench", notebook, "--runs", str(runs), "--json", *extra))
                row[key] = {field: result[field] for field in ("cold_s", "restored_s", "ratio")}
                row[key] |= {"cold_runs_s": result["cold_runs_s"], "restored_runs_s": result["restored_runs_s"]}
            row["cold_s"] = statistics.median(row["spares"]["cold_runs_s"] + row["no_spares"]["cold_runs_s"])
            rows.append(row)
    return rows


def stop(server: LocalServer, sessions: list[str]) -> None:
    """Delete the sessions, then SIGTERM the server (SIGKILL its process group if it lingers)."""
    for session in sessions:
        server.api("DELETE", f"api/sessions/{session}")
    server.terminate()
    server.kill()


def run_all_sources(notebook: Path) -> list[str]:
    """What Run All sends until the first reply after the setup cells: the setup cells, then the next cell."""
    book = notebook_to_run(notebook)
    section = setup_section_of(book)
    sources = [normalise(cell.source) for cell in book.cells if cell.cell_type == "code"]
    count = len(section.cells) if section else 0
    return [*sources[:count], sources[count] if count < len(sources) else "pass"]


def open_session(server: LocalServer, name: str, sources: list[str], barrier: threading.Barrier) -> dict[str, Any]:
    """POST a session of notebook `name` (after the barrier), then run `sources` in its kernel; return the times."""
    barrier.wait()
    posted = time.perf_counter()
    body = {
        "path": f"{name}-{secrets.token_hex(4)}",
        "name": name,
        "type": "notebook",
        "kernel": {"name": "snapkernel"},
    }
    response = server.api("POST", "api/sessions", json=body, timeout=600)
    created = time.perf_counter()
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/sessions answered {response.status_code}: {response.text}")
    session = response.json()
    client = server.client(session["kernel"]["id"])
    client.start_channels()
    try:
        for source in sources:
            reply = client.execute(source, reply=True, timeout=600)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"a cell failed in a session: {reply['content'].get('evalue')}")
    finally:
        client.stop_channels()
    replied = time.perf_counter()
    return {
        "session": session["id"],
        "kernel": session["kernel"]["id"],
        "posted": posted,
        "created": created,
        "replied": replied,
    }


def concurrent_run(folder: Path, store: Path, sessions: int, env: dict[str, str]) -> dict[str, Any]:
    """Start `sessions` sessions at once on a fresh server; time the 201s and the first replies after setup."""
    server = LocalServer(folder, {**env, "SNAPKERNEL_STORE": str(store)})
    opened: list[dict[str, Any]] = []
    try:
        sources = run_all_sources(server.root / CONCURRENT_NOTEBOOK)
        barrier = threading.Barrier(sessions)
        with ThreadPoolExecutor(max_workers=sessions) as pool:
            futures = [
                pool.submit(open_session, server, CONCURRENT_NOTEBOOK, sources, barrier) for _ in range(sessions)
            ]
            opened = [future.result() for future in futures]
        starts = Counter(server.api("GET", f"snapkernel/api/kernels/{row['kernel']}").json()["start"] for row in opened)
    except Exception as error:
        raise RuntimeError(f"{error}\nserver log:\n{server.log()[-4000:]}") from error
    finally:
        try:
            stop(server, [row["session"] for row in opened])
        finally:
            server.kill()
    first = min(row["posted"] for row in opened)
    return {
        "sessions": sessions,
        "all_created_s": round(max(row["created"] for row in opened) - first, 3),
        "median_created_s": round(statistics.median(row["created"] - row["posted"] for row in opened), 3),
        "all_replied_s": round(max(row["replied"] for row in opened) - first, 3),
        "median_replied_s": round(statistics.median(row["replied"] - row["posted"] for row in opened), 3),
        "starts": dict(starts),
        "all_restored": starts.get("restored", 0) == sessions,
    }


def concurrent_part(sessions: int) -> dict[str, Any]:
    """`sessions` sessions of one notebook through a real server: restored (snapshot built first), then all cold."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-bench-server-", dir="/var/tmp") as tmp:
        folder = Path(tmp)
        store = folder / "store"
        for kind in ("restored", "cold"):
            (folder / kind / "notebooks").mkdir(parents=True)
            shutil.copy(EXAMPLES / CONCURRENT_NOTEBOOK, folder / kind / "notebooks" / CONCURRENT_NOTEBOOK)
        snapkernel(store, "build", "--quiet", str(folder / "restored" / "notebooks" / CONCURRENT_NOTEBOOK))
        restored = concurrent_run(folder / "restored", store, sessions, {})
        cold = concurrent_run(folder / "cold", store, sessions, {"SNAPKERNEL_ENABLED": "0"})
    return {
        "notebook": CONCURRENT_NOTEBOOK,
        "measured": "from the first POST /api/sessions: until the last 201 (created), and until every kernel "
        "answered the setup cells and the cell after them, as Run All sends them (replied)",
        "restored": restored,
        "cold": cold,
        "ratio": round(cold["all_replied_s"] / restored["all_replied_s"], 2),
    }


def privilege_part(prefix: Path, runs: int, quick: bool) -> dict[str, Any]:
    """benchmarks/privilege_modes.py as a subprocess, or why it was skipped."""
    if quick:
        return {"skipped": "--quick"}
    if os.geteuid() != 0:
        return {"skipped": "not root: it creates users"}
    if not (prefix / "bin" / "jupyter").exists():
        return {"skipped": f"no machine-wide install: {prefix / 'bin' / 'jupyter'} is missing (make system-install)"}
    command = [sys.executable, str(REPO / "benchmarks" / "privilege_modes.py"), "--prefix", str(prefix)]
    command += ["--runs", str(runs), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"privilege_modes.py failed:\n{result.stdout}{result.stderr}")
    return {"prefix": str(prefix), "runs": runs, "rows": json.loads(result.stdout)}


def attempt(results: dict[str, Any], section: str, function: Callable[[], Any]) -> None:
    """Run one part into `results[section]`, timed; a failure is recorded there (and the other parts still run)."""
    print(f"[bench] {section}…", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        results[section] = function()
    except Exception as error:
        results[section] = {"error": f"{type(error).__name__}: {error}"}
        print(f"[bench] {section} failed: {error}", file=sys.stderr, flush=True)
    results.setdefault("part_seconds", {})[section] = round(time.perf_counter() - started, 1)


def grid(header: list[str], rows: list[list[str]]) -> list[str]:
    """Rows aligned in columns under their header: the first column to the left, the others to the right."""
    table = [header, *rows]
    widths = [max(len(row[column]) for row in table) for column in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in table
    ]


def engine_lines(engine: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    """The engine's dump and restore figures by process size."""
    if isinstance(engine, dict):
        return [f"engine: {engine['error']}"]
    header = [
        f"engine, median of {engine[0]['runs']}", "image", "dump", "sha256", "restore", "restore GB/s",
        "CRIU restore", "1 thread",
    ]  # fmt: skip
    rows = [
        [
            f"process holding {row['size_mb']} MB",
            f"{row['image_mb']:.0f} MB",
            f"{row['dump_s']:.2f} s",
            f"{row['verify_s']:.2f} s",
            f"{row['restore_s']:.2f} s",
            f"{row['restore_gbps']:.2f}",
            f"{row.get('criu_restore_s', float('nan')):.2f} s",
            f"{row.get('criu_restore_1thread_s', float('nan')):.2f} s",
        ]
        for row in engine
    ]
    return grid(header, rows) + floor_lines(engine[-1]) + [""] + build_stage_lines(engine)


def build_stage_lines(engine: list[dict[str, Any]]) -> list[str]:
    """Each size's dump end to end (to a published snapshot) split into its stages, beside CRIU's own dump."""
    if stage_key("criu_dump") not in engine[0]:
        return ["build stages: not measured (a latest.json from before they were)"]
    shown = [name for name in CHECKPOINT_STAGES if any(row[stage_key(name)] >= SHOWN_FROM_S for row in engine)]
    header = [f"build, median of {engine[0]['runs']}", *(STAGES[name] for name in shown), "published", "GB/s",
              "x CRIU dump"]  # fmt: skip
    rows = [
        [
            f"process holding {row['size_mb']} MB",
            *(f"{row[stage_key(name)]:.2f} s" for name in shown),
            f"{row['dump_s']:.2f} s",
            f"{row['dump_gbps']:.2f}",
            f"{row['dump_over_criu']:.2f}",
        ]
        for row in engine
    ]
    largest = engine[-1]
    met = largest["dump_gbps"] >= BUILD_TARGET_GBPS or largest["dump_over_criu"] <= BUILD_TARGET_OVER_CRIU
    verdict = (
        f"target for the {largest['size_mb']} MB build (issue 24): >= {BUILD_TARGET_GBPS:g} GB/s end to end, or "
        f"within {BUILD_TARGET_OVER_CRIU:g}x of CRIU's own dump: {'met' if met else 'NOT met'} "
        f"({largest['dump_gbps']:.2f} GB/s, {largest['dump_over_criu']:.2f}x)"
    )
    return [*grid(header, rows), verdict]


def floor_lines(row: dict[str, Any]) -> list[str]:
    """CRIU's restore of the largest image beside the machine's copy floor for its pages, measured in the same run."""
    if floor_name(2) not in row:
        return []
    return [
        f"copy floor of those {row['image_mb']:.0f} MB (benchmarks/copy_floor.c, page cache to fresh memory): "
        f"{row[floor_name(1)]:.2f} s with one thread, {row[floor_name(2)]:.2f} s with two; CRIU's restore "
        f"{row['criu_restore_s']:.2f} s = {row['criu_restore_over_floor']:.2f}x the two-thread floor "
        f"(one page-reading thread: {row['criu_restore_1thread_s']:.2f} s); the engine's whole restore "
        f"(namespaces, its init, CRIU) {row['restore_s']:.2f} s"
    ]


def notebook_lines(notebooks: dict[str, Any] | list[dict[str, Any]]) -> list[str]:
    """Cold and restored starts of each notebook."""
    if isinstance(notebooks, dict):
        return [f"notebooks: {notebooks['error']}"]
    header = [f"notebook, median of {notebooks[0]['runs']}", "cold", "spare", "ratio", "restore", "ratio", "build"]
    rows = [
        [
            row["notebook"],
            f"{row['cold_s']:.2f} s",
            f"{row['spares']['restored_s']:.2f} s",
            f"{row['spares']['ratio']:.1f}x",
            f"{row['no_spares']['restored_s']:.2f} s",
            f"{row['no_spares']['ratio']:.1f}x",
            f"{row['build_s']:.1f} s",
        ]
        for row in notebooks
    ]
    return grid(header, rows)


def concurrent_lines(concurrent: dict[str, Any]) -> list[str]:
    """Sessions started at once, restored and cold."""
    if "error" in concurrent:
        return [f"concurrent: {concurrent['error']}"]
    header = [
        f"{concurrent['restored']['sessions']} sessions of {concurrent['notebook']} at once",
        "all 201",
        "median 201",
        "all replied",
        "median replied",
        "starts",
    ]
    rows = [
        [
            kind,
            f"{concurrent[kind]['all_created_s']:.2f} s",
            f"{concurrent[kind]['median_created_s']:.2f} s",
            f"{concurrent[kind]['all_replied_s']:.2f} s",
            f"{concurrent[kind]['median_replied_s']:.2f} s",
            ", ".join(f"{count} {start}" for start, count in concurrent[kind]["starts"].items()),
        ]
        for kind in ("restored", "cold")
    ]
    return [*grid(header, rows), f"cold / restored, all replied: {concurrent['ratio']:.1f}x"]


def privilege_lines(privilege: dict[str, Any]) -> list[str]:
    """The torch example's starts in each privilege mode."""
    if "rows" not in privilege:
        return [f"privilege modes: {privilege.get('skipped') or privilege.get('error')}"]
    header = [f"torch_setup.ipynb by mode, median of {privilege['runs']}", "cold", "spare", "ratio"]
    header += ["restore", "ratio"]
    rows = [
        [
            row["mode"],
            f"{row['cold_s']:.2f} s",
            f"{row['spare_s']:.2f} s",
            f"{row['spare_ratio']:.1f}x",
            f"{row['restore_s']:.2f} s",
            f"{row['restore_ratio']:.1f}x",
        ]
        for row in privilege["rows"]
    ]
    return grid(header, rows)


def restore_point_lines(points: dict[str, Any]) -> list[str]:
    """The start and the build after an edit of the last setup cell, from the top and from the restore point
    before it; the chain's bytes against one full image."""
    if "error" in points:
        return [f"restore points: {points['error']}"]
    target = points["target_speedup"]
    header = [f"restore points, edit of the last setup cell, median of {points['runs']}", "from the top"]
    header += ["from the point", "speedup", "target"]
    rows = [
        [
            label,
            f"{points[key][top]:.2f} s",
            f"{points[key][point]:.2f} s",
            f"{points[key]['ratio']:.1f}x",
            f">= {target:g}x" + ("" if points[key]["ratio"] >= target else ", not met"),
        ]
        for label, key, top, point in (
            ("start (Run All to the reply after the setup)", "start", "cold_s", "edited_s"),
            ("build (`built in`: `build --from-top` / `build`)", "build", "full_s", "rebuild_s"),
        )
    ]
    build = points["build"]
    disk = points["disk"]
    sizes = " + ".join(f"{point['size_bytes'] / 1e6:.1f}" for point in disk["points"])
    rebuild, full = points["build"]["rebuild_phases_s"], points["build"]["full_phases_s"]
    return [
        *grid(header, rows),
        f"as whole commands (a process start in each): {build['full_command_s']:.2f} s / "
        f"{build['rebuild_command_s']:.2f} s = {build['command_ratio']:.1f}x",
        f"rebuild: restore {rebuild['restore_s']:.2f} s, cell {rebuild['cells_s']:.2f} s, checkpoint "
        f"{rebuild['checkpoint_s']:.2f} s; from the top: cells {full['cells_s']:.2f} s, checkpoints "
        f"{full['checkpoint_s']:.2f} s",
        f"disk: chain of {len(disk['points'])} ({sizes} MB) {disk['chain_bytes'] / 1e6:.1f} MB against one full "
        f"image {disk['full_image_bytes'] / 1e6:.1f} MB: {disk['ratio']:.2f}x",
    ]


def editor_lines(editors: dict[str, Any]) -> list[str]:
    """The papermill sweep's total wall time and the direct launch's first reply, restored against cold."""
    if "error" in editors:
        return [f"editors: {editors['error']}"]
    sweep, launch = editors["papermill_sweep"], editors["direct_launch"]
    header = ["torch example outside JupyterLab (bound kernelspec)", "cold", "restored", "speedup"]
    rows = [
        [f"papermill sweep of {sweep['runs']} runs, total wall time", f"{sweep['cold_s']:.2f} s",
         f"{sweep['restored_s']:.2f} s", f"{sweep['ratio']:.1f}x"],
        [f"argv run as VS Code does: launch to the first reply after the setup (median of {launch['runs']})",
         f"{launch['cold_s']:.2f} s", f"{launch['restored_s']:.2f} s", f"{launch['ratio']:.1f}x"],
    ]  # fmt: skip
    return grid(header, rows)


def registry_lines(registry: dict[str, Any]) -> list[str]:
    """Push and pull throughput, a rebuild's upload, and pull + restore against a cold run of the torch example."""
    if "error" in registry:
        return [f"registry: {registry['error']}"]
    rebuild = registry["rebuild"]
    header = [f"torch example through a registry (TLS, 127.0.0.1), median of {registry['runs']}", "figure"]
    rows = [
        [f"push of {registry['snapshot_bytes'] / 1e6:.0f} MB (snapshot and restore point)",
         f"{registry['push_s']:.2f} s, {registry['push_mb_per_s']:.0f} MB/s"],
        ["pull into an empty store", f"{registry['pull_s']:.2f} s, {registry['pull_mb_per_s']:.0f} MB/s"],
        ["rebuild after a one-line edit of the last setup cell (whole images): sent",
         f"{rebuild['second_bytes'] / 1e6:.0f} of {rebuild['second_total_bytes'] / 1e6:.0f} MB, "
         f"{rebuild['share']:.0%} of the first push"],
        ["`run` cold (setup included)", f"{registry['cold_s']:.2f} s"],
        ["`pull --notebook` + restored `run`",
         f"{registry['cli_pull_s']:.2f} + {registry['restored_s']:.2f} = {registry['pull_and_restore_s']:.2f} s, "
         f"{registry['pull_and_restore_ratio']:.1f}x cold"],
    ]  # fmt: skip
    return grid(header, rows)


def not_measured(results: dict[str, Any], part: str) -> Any:
    """A part's figures, or an error saying it was not measured (a latest.json from before the part existed)."""
    return results.get(part, {"error": "not measured"})


def table(results: dict[str, Any]) -> str:
    """The figures as a compact text table."""
    machine = results["machine"]
    lines = [
        f"{results['date']}  commit {results['commit']}  {machine['cpu']} ({machine['cores']} cores), "
        f"{machine['memory_gb']} GB, Linux {machine['kernel']}, CRIU {machine['criu']['version']}, "
        f"GPU {machine['gpu']}",
        *[
            f"{part} measured again on {merged['date']} at commit {merged['commit']} (--only)"
            for part, merged in results.get("merged", {}).items()
        ],
        "",
    ]
    sections = [
        engine_lines(not_measured(results, "engine")),
        notebook_lines(not_measured(results, "notebooks")),
        concurrent_lines(not_measured(results, "concurrent")),
        privilege_lines(not_measured(results, "privilege_modes")),
        restore_point_lines(not_measured(results, "restore_points")),
        editor_lines(not_measured(results, "editors")),
        registry_lines(not_measured(results, "registry")),
    ]
    for section in sections:
        lines += [*section, ""]
    return "\n".join(lines[:-1])


def plot_starts(axes: Any, notebooks: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Bars of cold against restored starts of each notebook, with the speed-ups."""
    if isinstance(notebooks, list):
        width = 0.26
        kinds = [
            ("cold", "#9e9e9e", lambda row: row["cold_s"], None),
            ("restored, spare kernel", "#1f77b4", lambda row: row["spares"]["restored_s"], "spares"),
            ("restored at start (no spares)", "#ff7f0e", lambda row: row["no_spares"]["restored_s"], "no_spares"),
        ]
        for offset, (label, color, value, key) in enumerate(kinds):
            xs = [index + (offset - 1) * width for index in range(len(notebooks))]
            heights = [value(row) for row in notebooks]
            bars = axes.bar(xs, heights, width, label=label, color=color)
            texts = [
                f"{height:.2f} s" if key is None else f"{row[key]['ratio']:.1f}×"
                for row, height in zip(notebooks, heights, strict=True)
            ]
            axes.bar_label(bars, texts, padding=2, fontsize=9)
        axes.set_xticks(range(len(notebooks)), [row["notebook"] for row in notebooks])
        axes.set_ylabel("seconds to the first reply after the setup cells")
        axes.set_title(f"Cold against restored starts (median of {notebooks[0]['runs']})")
        axes.margins(y=0.15)
        axes.legend(frameon=False, fontsize=9)
    else:
        axes.text(0.5, 0.5, "notebook bench failed", ha="center", transform=axes.transAxes)


def plot_restores(axes: Any, engine: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Engine restore time against image size, beside the target speed."""
    if isinstance(engine, list):
        sizes = [row["image_mb"] for row in engine]
        times = [row["restore_s"] for row in engine]
        axes.plot(sizes, times, "o-", color="#1f77b4", label="restore (median)")
        for size, seconds, row in zip(sizes, times, engine, strict=True):
            axes.annotate(
                f"{seconds:.2f} s, {row['restore_gbps']:.1f} GB/s",
                (size, seconds),
                textcoords="offset points",
                xytext=(8, -4),
                va="center",
                fontsize=9,
            )
        criu = [row.get("criu_restore_s", float("nan")) for row in engine]
        axes.plot(sizes, criu, "s-", color="#9467bd", label="CRIU's own restore (median)")
        if floor_name(2) in engine[-1]:
            floor = engine[-1][floor_name(2)]
            axes.plot([sizes[-1]], [floor], "v", color="#d62728", label=f"copy floor, 2 threads ({floor:.2f} s)")
        top = max(sizes) * 1.15
        axes.plot(
            [0, top], [0, top / (TARGET_GBPS * 1000)], "--", color="#2ca02c", label=f"target: {TARGET_GBPS:g} GB/s"
        )
        axes.set_xlim(0, top)
        axes.set_ylim(0, max(*times, top / (TARGET_GBPS * 1000)) * 1.2)
        axes.set_xlabel("image size (MB)")
        axes.set_ylabel("restore time (s)")
        axes.set_title(f"Engine restore time against image size (median of {engine[0]['runs']})")
        axes.legend(frameon=False, fontsize=9, loc="upper left")
    else:
        axes.text(0.5, 0.5, "engine bench failed", ha="center", transform=axes.transAxes)


def plot_build_stages(axes: Any, engine: dict[str, Any] | list[dict[str, Any]]) -> None:
    """Each size's build end to end as stacked stages, beside a bar of CRIU's own dump alone."""
    if not isinstance(engine, list) or stage_key("criu_dump") not in engine[0]:
        axes.text(0.5, 0.5, "build stages not measured", ha="center", transform=axes.transAxes)
        return
    colors = dict(zip(CHECKPOINT_STAGES, ["#9e9e9e", "#8c564b", "#1f77b4", "#17becf", "#bcbd22", "#ff7f0e",
                                          "#d62728", "#2ca02c"], strict=True))  # fmt: skip
    labelled: set[str] = set()
    for index, row in enumerate(engine):
        y = 2 * index
        left = 0.0
        for name in CHECKPOINT_STAGES:
            width = row[stage_key(name)]
            if width < SHOWN_FROM_S:
                continue
            label = None if name in labelled else STAGES[name]
            labelled.add(name)
            axes.barh(y + 0.5, width, 0.45, left=left, color=colors[name], label=label)
            left += width
        axes.text(left, y + 0.5, f" {row['dump_s']:.2f} s, {row['dump_gbps']:.2f} GB/s, "
                  f"{row['dump_over_criu']:.2f}x CRIU", va="center", fontsize=9)  # fmt: skip
        axes.barh(y, row["criu_dump_s"], 0.45, color="#c5b0d5")
        axes.text(row["criu_dump_s"], y, f" CRIU's own dump {row['criu_dump_s']:.2f} s", va="center", fontsize=9)
    axes.set_yticks([2 * index + 0.25 for index in range(len(engine))],
                    [f"{row['image_mb']:.0f} MB image" for row in engine])  # fmt: skip
    axes.set_xlim(0, max(row["dump_s"] for row in engine) * 1.6)
    axes.set_xlabel("seconds from the start of the checkpoint to a published snapshot")
    axes.set_title(f"Build stages against CRIU's own dump (median of {engine[0]['runs']}; target: "
                   f">= {BUILD_TARGET_GBPS:g} GB/s or <= {BUILD_TARGET_OVER_CRIU:g}x CRIU)")  # fmt: skip
    axes.legend(frameon=False, fontsize=8, loc="lower right", ncol=3)


def plot_restore_point_times(axes: Any, points: dict[str, Any]) -> None:
    """Bars of the start and the build after an edit of the last setup cell: from the top against from the
    restore point before it, with the speed-ups."""
    if "error" in points:
        axes.text(0.5, 0.5, "restore points bench failed", ha="center", transform=axes.transAxes)
        return
    groups = [("start", "cold_s", "edited_s"), ("build", "full_s", "rebuild_s")]
    width = 0.36
    kinds = [("from the top (cold start, `build --from-top`)", "#9e9e9e", 1), ("from the restore point", "#2ca02c", 2)]
    for offset, (label, color, column) in enumerate(kinds):
        xs = [index + (offset - 0.5) * width for index in range(len(groups))]
        heights = [points[group[0]][group[column]] for group in groups]
        bars = axes.bar(xs, heights, width, label=label, color=color)
        texts = [
            f"{height:.2f} s" + (f"\n{points[group[0]]['ratio']:.1f}× faster" if column == 2 else "")
            for group, height in zip(groups, heights, strict=True)
        ]
        axes.bar_label(bars, texts, padding=2, fontsize=9)
    axes.set_xticks(
        range(len(groups)), ["start\n(Run All to the reply after the setup)", "build\n(`build --from-top` / `build`)"]
    )
    axes.set_ylabel("seconds")
    axes.set_title(
        f"After an edit of the last setup cell (median of {points['runs']}; target {points['target_speedup']:g}×)"
    )
    axes.margins(y=0.2)
    axes.legend(frameon=False, fontsize=9, loc="upper left")


def plot_restore_point_disk(axes: Any, points: dict[str, Any]) -> None:
    """The chain's snapshots stacked, beside one full image of the same setup."""
    if "error" in points:
        axes.text(0.5, 0.5, "restore points bench failed", ha="center", transform=axes.transAxes)
        return
    disk = points["disk"]
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    left = 0.0
    for index, point in enumerate(disk["points"]):
        size = point["size_bytes"] / 1e6
        kind = "full image" if point["full"] else "pages changed"
        label = f"point after cell {point['cells']}: {size:.1f} MB ({kind})"
        axes.barh(1, size, 0.5, left=left, color=colors[index % len(colors)], label=label)
        left += size
    full = disk["full_image_bytes"] / 1e6
    axes.barh(0, full, 0.5, color="#9e9e9e", label="one full image, restore points off")
    axes.text(left, 1, f" {left:.1f} MB", va="center", fontsize=9)
    axes.text(full, 0, f" {full:.1f} MB", va="center", fontsize=9)
    axes.set_yticks([0, 1], ["one full image", f"chain of {len(disk['points'])}"])
    axes.set_xlim(0, max(left, full) * 1.3)
    axes.set_ylim(-0.5, 2.5)
    axes.set_xlabel("bytes on disk (MB)")
    axes.set_title(f"Disk: the chain takes {disk['ratio']:.2f}× one full image")
    axes.legend(frameon=False, fontsize=8, loc="upper left", ncol=2)


def plot_registry_starts(axes: Any, registry: dict[str, Any]) -> None:
    """The torch example's run: cold, pulled then restored (stacked), and restored from a local snapshot."""
    if "error" in registry:
        axes.text(0.5, 0.5, "registry bench failed", ha="center", transform=axes.transAxes)
        return
    axes.bar(0, registry["cold_s"], 0.6, color="#9e9e9e", label="cold (setup included)")
    axes.bar(1, registry["cli_pull_s"], 0.6, color="#ff7f0e", label="`pull --notebook` into an empty store")
    axes.bar(1, registry["restored_s"], 0.6, bottom=registry["cli_pull_s"], color="#2ca02c", label="restored run")
    axes.bar(2, registry["restored_s"], 0.6, color="#2ca02c")
    for x, height in enumerate((registry["cold_s"], registry["pull_and_restore_s"], registry["restored_s"])):
        axes.text(x, height, f"{height:.2f} s", ha="center", va="bottom", fontsize=9)
    axes.set_xticks([0, 1, 2], ["cold", "pull + restored", "restored (local)"])
    axes.set_ylabel("seconds (`run`, launch to the last reply)")
    axes.set_title(f"torch example from a registry (median of {registry['runs']})")
    axes.margins(y=0.2)
    axes.legend(frameon=False, fontsize=8, loc="upper right")


def plot_registry_transfers(axes: Any, registry: dict[str, Any]) -> None:
    """Push and pull throughput, and what a rebuild after a one-line edit sent against the first push."""
    if "error" in registry:
        axes.text(0.5, 0.5, "registry bench failed", ha="center", transform=axes.transAxes)
        return
    rebuild = registry["rebuild"]
    rates = [registry["push_mb_per_s"], registry["pull_mb_per_s"]]
    bars = axes.barh([3, 2], rates, 0.5, color=["#1f77b4", "#ff7f0e"])
    axes.bar_label(bars, [f"{rate:.0f} MB/s" for rate in rates], padding=3, fontsize=9)
    first, second = rebuild["first_bytes"] / 1e6, rebuild["second_bytes"] / 1e6
    sent = axes.barh([1, 0], [first, second], 0.5, color=["#9e9e9e", "#2ca02c"])
    axes.bar_label(sent, [f"{first:.0f} MB sent", f"{second:.0f} MB sent ({rebuild['share']:.0%})"], padding=3,
                   fontsize=9)  # fmt: skip
    axes.set_yticks([3, 2, 1, 0], ["push (MB/s)", "pull (MB/s)", "first push (MB)", "rebuild, 1 line (MB)"])
    axes.set_xlim(0, max(*rates, first) * 1.4)
    axes.set_title("Registry transfers (content-defined chunks)")


def plot(results: dict[str, Any], path: Path) -> None:
    """Seven panels: cold against restored starts of each notebook; restore time against image size; the start
    and the build after an edit of the last setup cell, from the top and from a restore point; the chain's bytes
    against one full image; the registry's starts and transfers; the build's stages against CRIU's own dump."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(4, 2, figsize=(13, 18.4), width_ratios=[1.2, 1])
    (left, right), (points_left, points_right), (registry_left, registry_right), last_row = panels
    for axes in last_row:
        axes.remove()
    plot_build_stages(figure.add_subplot(4, 1, 4), not_measured(results, "engine"))
    plot_starts(left, not_measured(results, "notebooks"))
    plot_restores(right, not_measured(results, "engine"))
    plot_restore_point_times(points_left, not_measured(results, "restore_points"))
    plot_restore_point_disk(points_right, not_measured(results, "restore_points"))
    plot_registry_starts(registry_left, not_measured(results, "registry"))
    plot_registry_transfers(registry_right, not_measured(results, "registry"))
    for axes in figure.axes:
        axes.spines[["top", "right"]].set_visible(False)
    machine = results["machine"]
    title = f"snapkernel {results['commit']}, {results['date'][:10]}: {machine['cpu']}, {machine['cores']} cores"
    for part, merged in results.get("merged", {}).items():
        title += f"; {part} measured at {merged['commit']}, {merged['date'][:10]}"
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.985))  # the whole figure's title above the panels' own
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> int:
    """Run every part, print the table, write latest.json and latest.png; exit 1 if a part failed."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", type=Path, default=Path("/opt/snapkernel"), help="the machine-wide install")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measurement (medians are reported)")
    parser.add_argument("--sessions", type=int, default=16, help="sessions started at once through the server")
    parser.add_argument("--quick", action="store_true", help="1 run each, no privilege modes: a fast self-check")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results", help="folder for latest.*")
    parser.add_argument(
        "--only",
        action="append",
        choices=PARTS,
        help="run only this part (repeatable) and merge its figures into the folder's latest.json",
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    started = time.perf_counter()
    now, commit = datetime.now(UTC).isoformat(timespec="seconds"), git_commit()
    latest = args.output / "latest.json"
    if args.only and latest.exists():
        results: dict[str, Any] = json.loads(latest.read_text())
    else:
        results = {"date": now, "commit": commit, "machine": machine_facts(), "quick": args.quick, "runs": runs}
    parts: dict[str, Callable[[], Any]] = {
        "engine": lambda: engine_part(runs),
        "notebooks": lambda: notebook_part(runs),
        "concurrent": lambda: concurrent_part(args.sessions),
        "privilege_modes": lambda: privilege_part(args.prefix, runs, args.quick),
        "restore_points": lambda: measure_restore_points(runs),
        "editors": lambda: measure_editors(runs),
        "registry": lambda: measure_registry(runs),
    }
    chosen = [part for part in PARTS if not args.only or part in args.only]
    for part in chosen:
        attempt(results, part, parts[part])
        if args.only:
            results.setdefault("merged", {})[part] = {"date": now, "commit": commit, "quick": args.quick, "runs": runs}
    elapsed = round(time.perf_counter() - started, 1)
    if not args.only:
        results["total_s"] = elapsed
    args.output.mkdir(parents=True, exist_ok=True)
    latest.write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.output / "latest.png")
    print(table(results))
    print(f"\n{elapsed:.0f} s; wrote {latest} and {args.output / 'latest.png'}")
    failed = [name for name in chosen if "error" in results[name]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
