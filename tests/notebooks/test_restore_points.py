"""Restore points inside the setup: an edit of a setup cell runs only that cell and those after it again.

The notebook of the issue: setup cell A loads 300 MB for at least 3 s, B runs for at least 1 s, and C is
tagged and fast. Builds and runs go through the real CLI (`build`, `run --json`), with real CRIU.
"""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.harness import cli, notebook, run

SLOW_LOAD = (
    "import time\nimport numpy as np\nstarted = time.perf_counter()\n"
    "data = np.random.default_rng(7).integers(0, 256, 300_000_000, dtype=np.uint8)\n"
    "time.sleep(max(0.0, 3.2 - (time.perf_counter() - started)))\nprint('loaded', data.nbytes)"
)
FEATURES = "time.sleep(1.2)\nfeatures = int(data[:1_000_000].sum())\nprint('features', features)"
HEAD = "head = open('head.txt').read().strip()\nprint('head', head, features % 1000)"
AFTER = "print('after', head, features)"


@pytest.fixture
def chain(tmp_path: Path) -> tuple[Path, Path, list[dict[str, object]]]:
    """The notebook of A, B and C built once: its path, its store, and its snapshots (oldest first)."""
    (tmp_path / "head.txt").write_text("linear\n")
    book = notebook(tmp_path / "points.ipynb", [SLOW_LOAD, FEATURES, HEAD], [AFTER])
    store = tmp_path / "store"
    built = cli(store, "build", str(book), cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    points = [line for line in built.stderr.splitlines() if "snapshot " in line and "MB" in line]
    assert len(points) == 3, built.stderr  # one progress line per restore point, each with its size
    assert "restore point after setup cell 1/3" in points[0] and "full image" in points[0], points
    assert "restore point after setup cell 2/3" in points[1] and "pages changed" in points[1], points
    assert "end of the setup" in points[2], points
    return book, store, listed(store, tmp_path)


def listed(store: Path, cwd: Path) -> list[dict[str, object]]:
    """`list --json`: the store's snapshots."""
    result = cli(store, "list", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def edit_cell(book: Path, index: int, source: str) -> None:
    """Replace the source of one cell, keeping its tags."""
    content = nbformat.read(book, as_version=4)
    content.cells[index].source = source
    nbformat.write(content, book)


def test_an_edit_of_the_last_setup_cell_restores_the_point_before_it_and_the_rebuild_runs_only_that_cell(
    chain: tuple[Path, Path, list[dict[str, object]]],
) -> None:
    book, store, snapshots = chain
    full_image = next(row for row in snapshots if row["parent"] is None)
    assert full_image["size_bytes"] > 300e6  # type: ignore[operator]
    sizes = {str(row["id"]): row for row in snapshots}
    # The three restore points take hardly more than the full image alone.
    total = sum(int(row["size_bytes"]) for row in sizes.values())  # type: ignore[call-overload]
    print(f"restore points: {total / 1e6:.1f} MB in all, full image {int(full_image['size_bytes']) / 1e6:.1f} MB")  # type: ignore[call-overload]
    assert total <= 1.2 * int(full_image["size_bytes"])  # type: ignore[call-overload]

    edit_cell(book, 2, HEAD.replace("features % 1000", "features % 997"))
    restored = run(book, store)
    assert restored.summary["start"] == "restored", restored.summary
    assert (restored.summary["restored_cells"], restored.summary["setup_cells"]) == (2, 3), restored.summary
    cold = run(book, store, cold=True)
    assert restored.cells == cold.cells, (restored.cells, cold.cells)

    rebuilt = cli(store, "build", str(book), cwd=book.parent)
    assert rebuilt.returncode == 0, rebuilt.stderr
    ran = [line for line in rebuilt.stderr.splitlines() if "running setup cell" in line]
    # Only cell 3 runs (twice where the first checkpoint of the restored tree failed and the point was tried again).
    assert {line.split("] ")[1] for line in ran} == {"running setup cell 3/3"}, rebuilt.stderr
    again = run(book, store)
    assert again.summary["start"] == "restored" and again.summary["restored_cells"] is None, again.summary
    assert again.cells == cold.cells


def test_an_edit_of_the_middle_cell_restores_the_first_point_and_an_edit_of_the_first_cell_starts_cold(
    chain: tuple[Path, Path, list[dict[str, object]]],
) -> None:
    book, store, _ = chain
    edit_cell(book, 1, FEATURES.replace("1_000_000", "2_000_000"))
    restored = run(book, store)
    assert (restored.summary["start"], restored.summary["restored_cells"]) == ("restored", 1), restored.summary
    assert restored.cells == run(book, store, cold=True).cells

    edit_cell(book, 0, SLOW_LOAD.replace("default_rng(7)", "default_rng(8)"))
    cold_start = run(book, store)
    assert cold_start.summary["start"] == "cold", cold_start.summary


def test_a_file_only_the_last_setup_cell_reads_restores_the_point_before_it(
    chain: tuple[Path, Path, list[dict[str, object]]],
) -> None:
    book, store, _ = chain
    (book.parent / "head.txt").write_text("quadratic\n")
    restored = run(book, store)
    assert (restored.summary["start"], restored.summary["restored_cells"]) == ("restored", 2), restored.summary
    assert any("head quadratic" in output for output in restored.cells[2]), restored.cells
    assert restored.cells == run(book, store, cold=True).cells
