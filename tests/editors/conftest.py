"""Bound kernelspecs in a Jupyter path of the test's own, and a notebook whose setup ends after its parameters."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import nbformat
import pytest

from tests.helpers import snapkernel

SLOW_SETUP = "import os, time\ntime.sleep(0.5)\nbase = 40"
AFTER = [
    "print('result', result, steps)",
    "import random\nrandom.seed(alpha)\nprint('drawn', random.random())",
    "print('start', get_ipython().kernel.start_info.mode)",  # asks the kernel how it started: not compared
]
# (source, tags) of each code cell. Inside: papermill's `parameters` cell is the second setup cell, and the
# last setup cell uses it (a run that restored the whole setup with other parameters would print other
# numbers). After: the setup ends before the parameters cell.
PARAMETERS_INSIDE = [
    (SLOW_SETUP, []), ("alpha = 1", ["parameters"]), ("steps = [alpha]\nresult = base + alpha", ["snapshot"]),
]  # fmt: skip
PARAMETERS_AFTER = [
    (SLOW_SETUP, []), ("scale = 2", ["snapshot"]), ("alpha = 1", ["parameters"]),
    ("steps = [alpha]\nresult = base + alpha * scale", []),
]  # fmt: skip


def parameters_notebook(path: Path, cells: list[tuple[str, list[str]]]) -> Path:
    """A notebook of these (source, tags) code cells, then AFTER (its folder made)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "snapkernel", "display_name": "Python 3 (snapshots)", "language": "python"}
    for source, tags in [*cells, *((source, []) for source in AFTER)]:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = list(tags)
        book.cells.append(cell)
    nbformat.write(book, path)
    return path


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A prefix whose share/jupyter is searched for kernelspecs (JUPYTER_PATH), here and in child processes."""
    prefix = tmp_path / "prefix"
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
    return prefix


def install_bound_kernelspec(notebook: Path, prefix: Path, store: Path, name: str) -> dict[str, object]:
    """`jupyter snapkernel kernelspec install NB --prefix P --name N`; return the installed kernel.json."""
    installed = snapkernel("kernelspec", "install", str(notebook), "--prefix", str(prefix), "--name", name, store=store)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    spec: dict[str, object] = json.loads((prefix / "share" / "jupyter" / "kernels" / name / "kernel.json").read_text())
    return spec


def run_checked(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command to its end (at most 5 minutes); fail the test with its output when it fails."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result
