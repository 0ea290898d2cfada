"""Run a notebook restored (twice) and cold through the real CLI, and compare what its cells printed."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from tests.kernel.conftest import write_notebook

JUPYTER = Path(sys.executable).with_name("jupyter")
# Differences a restored run may show against a cold one, by nature: object addresses and widget model ids.
ALWAYS_VOLATILE = (r"0x[0-9a-f]+", r'"model_id": "[0-9a-f]+"', r"model_id='[0-9a-f]+'")


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


def output_text(output: dict[str, Any]) -> str:
    """What a person sees of one output, as text (images by their type)."""
    kind = output["output_type"]
    if kind == "stream":
        return output["text"]
    if kind == "error":
        return f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    shown = [data.get("text/plain", "")]
    shown += [f"<{mime}>" for mime in sorted(data) if mime.startswith("image/")]
    if "application/vnd.jupyter.widget-view+json" in data:
        shown.append(json.dumps(data["application/vnd.jupyter.widget-view+json"], sort_keys=True))
    return "\n".join(shown)


def shown(outputs: list[dict[str, Any]]) -> list[str]:
    """A cell's outputs as a person sees them: consecutive writes to one stream read as one text."""
    texts: list[str] = []
    previous = None
    for output in outputs:
        stream = output.get("name") if output["output_type"] == "stream" else None
        if stream is not None and stream == previous:
            texts[-1] += output["text"]
        else:
            texts.append(output_text(output))
        previous = stream
    return texts


def normalise(text: str, volatile: Sequence[str]) -> str:
    """Blank out what may differ between runs by nature (declared per notebook)."""
    for pattern in (*ALWAYS_VOLATILE, *volatile):
        text = re.sub(pattern, "<volatile>", text)
    return text


def run(
    notebook: Path, store: Path, *, cold: bool = False, env: dict[str, str] | None = None, volatile: Sequence[str] = ()
) -> Run:
    """Execute a notebook headless; return its start summary and normalised outputs."""
    output = notebook.with_name(f"{notebook.stem}.{'cold' if cold else 'restored'}.out.ipynb")
    args = ["run", "--json", "--output", str(output), *(["--cold"] if cold else []), str(notebook)]
    result = cli(store, *args, cwd=notebook.parent, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    executed = nbformat.read(output, as_version=4)
    cells = [[normalise(text, volatile) for text in shown(cell.get("outputs", []))] for cell in executed.cells]
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
