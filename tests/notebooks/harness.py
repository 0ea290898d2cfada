"""Run a notebook restored (twice) and cold through the real CLI, and compare what its cells printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from jupyter_snapkernel.launch.check import cell_outputs
from tests.helpers import write_notebook

JUPYTER = Path(sys.executable).with_name("jupyter")


@dataclass
class Run:
    """One headless run: how the kernel started and each cell's outputs as text."""

    summary: dict[str, Any]
    cells: list[list[str]]
    stderr: str


def cli(store: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `jupyter snapkernel --store STORE ARGS` in `cwd`."""
    return subprocess.run(
        [str(JUPYTER), "snapkernel", "--store", str(store), *args],
        cwd=cwd,
        env={**os.environ, "SNAPKERNEL_AUTO_BUILD": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def run(
    notebook: Path, store: Path, *, cold: bool = False, env: dict[str, str] | None = None, volatile: Sequence[str] = ()
) -> Run:
    """Execute a notebook headless; return its start summary and normalised outputs."""
    output = notebook.with_name(f"{notebook.stem}.{'cold' if cold else 'restored'}.out.ipynb")
    args = ["run", "--json", "--output", str(output), *(["--cold"] if cold else []), str(notebook)]
    result = cli(store, *args, cwd=notebook.parent, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = nbformat.read(output, as_version=4)
    cells = cell_outputs(executed, volatile)  # the product's own normalisation (`jupyter snapkernel check`)
    return Run(json.loads(result.stdout.strip().splitlines()[-1]), cells, result.stderr)


def build(notebook: Path, store: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Build the notebook's snapshot through the CLI."""
    return cli(store, "build", "--quiet", str(notebook), cwd=notebook.parent, env=env)


def restored_twice_and_cold(
    notebook: Path, store: Path, *, env: dict[str, str] | None = None, volatile: Sequence[str] = ()
) -> tuple[Run, Run, Run]:
    """Build, run restored twice and cold once; every run must print what the cold one does."""
    built = build(notebook, store, env)
    assert built.returncode == 0, built.stdout + built.stderr
    first, second = (run(notebook, store, env=env, volatile=volatile) for _ in range(2))
    cold = run(notebook, store, cold=True, env=env, volatile=volatile)
    assert [first.summary["start"], second.summary["start"], cold.summary["start"]] == ["restored"] * 2 + ["cold"], (
        first.summary,
        second.summary,
    )
    assert first.cells == cold.cells, (first.cells, cold.cells)
    assert second.cells == cold.cells, (second.cells, cold.cells)
    return first, second, cold


def notebook(path: Path, setup: list[str], after: list[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write a notebook whose last setup cell is marked; `metadata` goes under the notebook's "snapkernel" key."""
    write_notebook(path, setup, marked=len(setup) - 1, after=after)
    if metadata:
        book = nbformat.read(path, as_version=4)
        book.metadata["snapkernel"] = metadata
        nbformat.write(book, path)
    return path
