"""The torch example outside JupyterLab, restored through a bound kernelspec against cold: a papermill
parameter sweep, and a kernelspec argv run as VS Code runs it.

The torch example (`examples/torch_setup.ipynb`) gets a cell tagged `parameters` after its setup (`rows = 8`),
and its last cell prints the model's output over `rows` rows. In a fresh store, with automatic builds off, the
snapshot is built with the real CLI and a kernelspec is bound to the notebook (`kernelspec install`); then real
papermill runs the notebook `SWEEP` times (`-k` the bound kernelspec, `-p rows N` for N = 1..SWEEP) one after
the other, once restoring and once cold (SNAPKERNEL_COLD=1). Each figure is the sweep's total wall time, every
papermill process included; every restored run must say it restored, and its cell after the setup must print
what the cold run's printed.

The direct launch: the bound kernelspec's argv run as vscode-jupyter runs it (`-f {connection_file}`
replaced by `--f=FILE`, the notebook's folder as cwd, no JPY_SESSION_NAME), then Run All's first requests
(the setup cells, replayed by a restored kernel, and the first cell after them) from a BlockingKernelClient;
the figure is the time from the launch to that cell's reply, median of `runs`, restored and cold.

`python benchmarks/editors_bench.py [--runs N]` prints the result as JSON; `make bench` puts it in
benchmarks/results/latest.json under "editors".
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parents[1]
TORCH_EXAMPLE = REPO / "examples" / "torch_setup.ipynb"
JUPYTER = Path(sys.executable).with_name("jupyter")
SWEEP = 10
KERNEL = "snapkernel-papermill-bench"
PARAMETERS = "rows = 8"
LAST_CELL = "with torch.no_grad():\n    print(rows, model(features[:rows]).sum().item())"
HOW_IT_STARTED = "info = get_ipython().kernel.start_info\nprint('start', info.reason, info.mode)"


def sweep_notebook(folder: Path) -> Path:
    """The torch example with a parameters cell after its setup, a last cell that uses it, and one that says
    how the kernel started."""
    book = nbformat.read(TORCH_EXAMPLE, as_version=4)
    last_setup = max(index for index, cell in enumerate(book.cells) if "snapshot" in cell.metadata.get("tags", []))
    parameters = nbformat.v4.new_code_cell(PARAMETERS)
    parameters.metadata["tags"] = ["parameters"]
    book.cells = [*book.cells[: last_setup + 1], parameters, nbformat.v4.new_code_cell(LAST_CELL)]
    book.cells.append(nbformat.v4.new_code_cell(HOW_IT_STARTED))
    (folder / "work").mkdir()
    path = folder / "work" / "torch_sweep.ipynb"
    nbformat.write(book, path)
    return path


def checked(command: list[str], env: dict[str, str]) -> None:
    """Run a command; raise with its output when it fails."""
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])}… failed: {result.stderr[-2000:]}")


def printed(path: Path) -> list[str]:
    """What each code cell of an executed notebook printed."""
    book = nbformat.read(path, as_version=4)
    return [
        "".join(output.get("text", "") for output in cell.outputs) for cell in book.cells if cell.cell_type == "code"
    ]


def sweep(notebook: Path, outputs: Path, env: dict[str, str]) -> tuple[float, list[float], list[list[str]]]:
    """Run papermill SWEEP times in a row; return the total seconds, each run's seconds and what each printed."""
    seconds, prints = [], []
    started = time.perf_counter()
    for rows in range(1, SWEEP + 1):
        output = outputs / f"run-{rows}.ipynb"
        begun = time.perf_counter()
        checked(
            [sys.executable, "-m", "papermill", str(notebook), str(output), "-k", KERNEL, "-p", "rows", str(rows)], env
        )
        seconds.append(round(time.perf_counter() - begun, 3))
        prints.append(printed(output))
    return round(time.perf_counter() - started, 3), seconds, prints


def direct_launch(argv: list[str], notebook: Path, env: dict[str, str], sources: list[str]) -> float:
    """Seconds from running a kernelspec's argv as VS Code does to the reply of the last of `sources`."""
    from jupyter_client.blocking.client import BlockingKernelClient
    from jupyter_client.connect import write_connection_file

    runtime = notebook.parent.parent / "runtime"  # jupyter_client marks a connection file's folder sticky
    runtime.mkdir(exist_ok=True)
    connection_file = runtime / f"kernel-v3{secrets.token_hex(8)}.json"
    write_connection_file(str(connection_file), ip="127.0.0.1", key=secrets.token_hex(16).encode())
    index = argv.index("-f")
    command = [*argv[:index], *argv[index + 2 :], f"--f={connection_file}"]
    started = time.perf_counter()
    launched = subprocess.Popen(
        command, cwd=notebook.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = BlockingKernelClient(connection_file=str(connection_file))
    client.load_connection_file()
    client.start_channels(hb=False)  # as the tests do: a kernel still starting is not a dead one
    try:
        # As frontends do: kernel_info until it answers, so that iopub is subscribed before the first cell runs.
        client.wait_for_ready(timeout=300)
        for source in sources:
            reply = client.execute_interactive(source, timeout=300, output_hook=lambda _message: None)
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"a cell failed in a direct launch: {reply['content'].get('evalue')}")
        return time.perf_counter() - started
    finally:
        client.stop_channels()
        launched.send_signal(signal.SIGTERM)
        launched.wait(30)


def prepared(folder: Path) -> tuple[Path, dict[str, str], list[str]]:
    """The sweep notebook with its snapshot built and a kernelspec bound to it; the environment that finds it, and
    the kernelspec's argv."""
    env = {**os.environ, "SNAPKERNEL_STORE": str(folder / "store"), "SNAPKERNEL_AUTO_BUILD": "0"}
    env["JUPYTER_PATH"] = str(folder / "prefix" / "share" / "jupyter")
    env.pop("JPY_SESSION_NAME", None)
    notebook = sweep_notebook(folder)
    checked([str(JUPYTER), "snapkernel", "build", "--quiet", str(notebook)], env)
    install = ["kernelspec", "install", str(notebook), "--name", KERNEL, "--prefix", str(folder / "prefix")]
    checked([str(JUPYTER), "snapkernel", *install], env)
    spec = json.loads((folder / "prefix" / "share" / "jupyter" / "kernels" / KERNEL / "kernel.json").read_text())
    return notebook, env, spec["argv"]


def measure_direct_launches(runs: int) -> dict[str, Any]:
    """Launch to the reply of the first cell after the setup, the argv run as VS Code runs it: restored, cold."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-editors-bench-") as scratch:
        notebook, env, argv = prepared(Path(scratch))
        book = nbformat.read(notebook, as_version=4)
        code = [cell for cell in book.cells if cell.cell_type == "code"]
        last_setup = max(i for i, cell in enumerate(code) if "snapshot" in cell.metadata.get("tags", []))
        sources = [cell.source for cell in code[: last_setup + 3]]  # the setup, the parameters, the first cell after
        restored = [direct_launch(argv, notebook, env, sources) for _ in range(runs)]
        cold = [direct_launch(argv, notebook, {**env, "SNAPKERNEL_COLD": "1"}, sources) for _ in range(runs)]
    restored_s, cold_s = statistics.median(restored), statistics.median(cold)
    return {
        "runs": runs,
        "restored_s": round(restored_s, 3),
        "cold_s": round(cold_s, 3),
        "ratio": round(cold_s / restored_s, 2),
        "restored_runs_s": [round(seconds, 3) for seconds in restored],
        "cold_runs_s": [round(seconds, 3) for seconds in cold],
    }


def measure_papermill_sweep() -> dict[str, Any]:
    """The sweep's total wall time restored and cold, and each run's median."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-editors-bench-") as scratch:
        folder = Path(scratch)
        notebook, env, _ = prepared(folder)
        (folder / "restored").mkdir()
        (folder / "cold").mkdir()
        restored_s, restored_runs, restored_prints = sweep(notebook, folder / "restored", env)
        cold_s, cold_runs, cold_prints = sweep(notebook, folder / "cold", {**env, "SNAPKERNEL_COLD": "1"})
    starts = [prints[-1].split()[-1] for prints in restored_prints]
    if starts != ["restored"] * SWEEP:
        reasons = [prints[-1].strip() for prints in restored_prints]
        raise RuntimeError(f"not every run restored: {reasons}")
    # The setup cells print how long they took (the build's times, replayed); the cell after them prints results.
    if [prints[-2] for prints in restored_prints] != [prints[-2] for prints in cold_prints]:
        raise RuntimeError("restored runs printed other numbers than cold ones")
    return {
        "notebook": "examples/torch_setup.ipynb with a parameters cell after its setup",
        "runs": SWEEP,
        "restored_s": restored_s,
        "cold_s": cold_s,
        "ratio": round(cold_s / restored_s, 2),
        "restored_run_median_s": statistics.median(restored_runs),
        "cold_run_median_s": statistics.median(cold_runs),
        "restored_runs_s": restored_runs,
        "cold_runs_s": cold_runs,
    }


def measure_editors(runs: int) -> dict[str, Any]:
    """Both figures: the papermill sweep and the direct launches."""
    return {"papermill_sweep": measure_papermill_sweep(), "direct_launch": measure_direct_launches(runs)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="direct launches of each kind (the median is reported)")
    print(json.dumps(measure_editors(parser.parse_args().runs), indent=2))
