"""papermill and nbclient with snapkernel kernels: restored through a bound kernelspec or SNAPKERNEL_NOTEBOOK,
with outputs equal to cold runs; cold, saying why, when nothing names the notebook."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from jupyter_snapkernel.notebook.binding import NO_NOTEBOOK
from tests.editors.conftest import (
    PARAMETERS_AFTER,
    PARAMETERS_INSIDE,
    install_bound_kernelspec,
    parameters_notebook,
    run_checked,
)
from tests.helpers import build, run_json

HOW_IT_STARTED = -1  # the last cell prints how the kernel started: the one output a restored run may differ in


def papermill(
    notebook: Path, output: Path, kernel: str, store: Path, *options: str, cold: bool = False
) -> nbformat.NotebookNode:
    """Run real papermill (`python -m papermill IN OUT -k KERNEL OPTIONS…`); return the notebook it wrote."""
    env = {**os.environ, "SNAPKERNEL_STORE": str(store), **({"SNAPKERNEL_COLD": "1"} if cold else {})}
    env.pop("JPY_SESSION_NAME", None)
    run_checked([sys.executable, "-m", "papermill", str(notebook), str(output), "-k", kernel, *options], env=env)
    return nbformat.read(output, as_version=4)


def printed(book: nbformat.NotebookNode) -> list[str]:
    """What each code cell printed or returned, in order."""
    texts = []
    for cell in book.cells:
        if cell.cell_type == "code":
            parts = [
                output.get("text", "") or str(output.get("data", {}).get("text/plain", "")) for output in cell.outputs
            ]
            texts.append("".join(parts))
    return texts


def how_it_started(book: nbformat.NotebookNode) -> str:
    """How the kernel that ran a notebook started, as the notebook's last cell printed it."""
    return printed(book)[HOW_IT_STARTED].split()[-1]


def built_and_bound(tmp_path: Path, jupyter_path: Path, name: str, cells: list[tuple[str, list[str]]]) -> Path:
    """A notebook NAME.ipynb of these cells, its snapshot built in tmp_path/store, bound to kernelspec
    snapkernel-NAME; return the notebook."""
    notebook = parameters_notebook(tmp_path / "work" / f"{name}.ipynb", cells)
    build(notebook, tmp_path / "store")
    install_bound_kernelspec(notebook, jupyter_path, tmp_path / "store", f"snapkernel-{name}")
    return notebook


def restored_and_cold(notebook: Path, *options: str) -> tuple[nbformat.NotebookNode, nbformat.NotebookNode]:
    """papermill runs of a notebook built and bound by built_and_bound, restored then cold, with `options`; both
    printed the same, but for how they started."""
    store, kernel = notebook.parents[1] / "store", f"snapkernel-{notebook.stem}"
    restored = papermill(notebook, notebook.with_name("restored.ipynb"), kernel, store, *options)
    cold = papermill(notebook, notebook.with_name("cold.ipynb"), kernel, store, *options, cold=True)
    assert printed(restored)[:HOW_IT_STARTED] == printed(cold)[:HOW_IT_STARTED]
    assert (how_it_started(restored), how_it_started(cold)) == ("restored", "cold")
    return restored, cold


def test_papermill_with_a_bound_kernelspec_restores_equals_a_cold_run_and_sweeps_parameters(
    tmp_path: Path, jupyter_path: Path
) -> None:
    """Parameters after the setup: each run restores the whole setup; outputs equal a cold run's; a 5-run sweep
    prints each run's own numbers."""
    notebook = built_and_bound(tmp_path, jupyter_path, "sweep", PARAMETERS_AFTER)
    restored, _ = restored_and_cold(notebook, "-p", "alpha", "0.5")
    assert "result 41.0 [0.5]\n" in printed(restored)

    for alpha in range(1, 6):
        output = tmp_path / f"sweep-{alpha}.ipynb"
        run = papermill(notebook, output, "snapkernel-sweep", tmp_path / "store", "-p", "alpha", str(alpha))
        assert how_it_started(run) == "restored"
        assert f"result {40 + alpha * 2} [{alpha}]\n" in printed(run)
        assert f"drawn {random.Random(alpha).random()}\n" in printed(run)


def test_papermill_parameters_inside_the_setup_give_a_cold_runs_results(tmp_path: Path, jupyter_path: Path) -> None:
    """Parameters injected inside the setup: the setup from the parameters on runs again (restored up to the
    restore point before them), and every output equals a cold run with the same parameters."""
    notebook = built_and_bound(tmp_path, jupyter_path, "inside", PARAMETERS_INSIDE)
    restored, _ = restored_and_cold(notebook, "-p", "alpha", "5")  # restored: the point after the parameters cell
    assert "result 45 [5]\n" in printed(restored)

    unchanged = papermill(notebook, tmp_path / "unchanged.ipynb", "snapkernel-inside", tmp_path / "store")
    assert "result 41 [1]\n" in printed(unchanged) and how_it_started(unchanged) == "restored"


def nbclient_run(notebook: Path) -> nbformat.NotebookNode:
    """Execute a notebook with nbclient and the generic `snapkernel` kernelspec, in the notebook's folder."""
    book = nbformat.read(notebook, as_version=4)
    NotebookClient(book, kernel_name="snapkernel", resources={"metadata": {"path": str(notebook.parent)}}).execute()
    return book


def test_nbclient_restores_with_snapkernel_notebook_and_says_why_it_is_cold_without(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The generic kernelspec through nbclient: SNAPKERNEL_NOTEBOOK restores; without it the kernel starts cold
    and the first output says why and what to do."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "batch.ipynb", PARAMETERS_AFTER)
    build(notebook, store)
    monkeypatch.setenv("SNAPKERNEL_STORE", str(store))
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)

    monkeypatch.setenv("SNAPKERNEL_NOTEBOOK", notebook.name)  # relative to the kernel's working folder
    restored = nbclient_run(notebook)
    assert how_it_started(restored) == "restored"

    monkeypatch.delenv("SNAPKERNEL_NOTEBOOK")
    cold = nbclient_run(notebook)
    assert how_it_started(cold) == "cold"
    first: dict[str, Any] = cold.cells[0].outputs[0]
    assert (first["name"], first["text"]) == ("stderr", f"snapkernel: cold start ({NO_NOTEBOOK})\n")
    assert printed(restored)[1:HOW_IT_STARTED] == printed(cold)[1:HOW_IT_STARTED]


def test_run_with_parameters_injects_them_as_papermill_does_and_restores_the_setup_before_them(
    tmp_path: Path,
) -> None:
    """`jupyter snapkernel run -p alpha 5` inside the setup: the restore point after the parameters cell, the
    injected cell after it, and a cold run's numbers."""
    store = tmp_path / "store"
    notebook = parameters_notebook(tmp_path / "work" / "cli.ipynb", PARAMETERS_INSIDE)
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    code, summary, _ = run_json(notebook, store, "-p", "alpha", "5", "--output", str(output))
    assert code == 0 and (summary["start"], summary["restored_cells"]) == ("restored", 2)
    book = nbformat.read(output, as_version=4)
    assert (
        book.cells[2].metadata["tags"] == ["injected-parameters"]
        and book.cells[2].source == "# Parameters\nalpha = 5\n"
    )
    assert "result 45 [5]\n" in printed(book)
    cold = tmp_path / "cold.ipynb"
    code, summary, _ = run_json(notebook, store, "-p", "alpha", "5", "--cold", "--output", str(cold))
    assert code == 0 and printed(nbformat.read(cold, as_version=4))[:-1] == printed(book)[:-1]
