"""Chains of restore points under retention and faults: nothing left that cannot be restored, no good point lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import nbformat
import pytest

from jupyter_snapkernel.notebook.builder import BuildError, keep_within_limits
from jupyter_snapkernel.notebook.state import notebook_file_state
from jupyter_snapkernel.paths import open_store
from snapkernel_engine.chains import chain_bytes
from tests.notebooks.harness import JUPYTER, cli, notebook, run

LOAD = "import time\ntime.sleep(1.1)\nblock = bytes(range(256)) * 200_000\nprint('loaded', len(block))"
SLOW = "time.sleep({seconds})\ntotal = sum(block[:100_000])\nprint('total', total)"
LAST = "print('last', total % 7)"


def three_points(folder: Path, middle_seconds: float = 1.1) -> Path:
    """A notebook of a 1 s load of 51 MB, a cell of `middle_seconds`, and a tagged fast last setup cell."""
    return notebook(folder / "chain.ipynb", [LOAD, SLOW.format(seconds=middle_seconds), LAST], ["print('after')"])


def listed(store: Path, cwd: Path) -> list[dict[str, object]]:
    """`list --json`: every entry of the store, corrupt ones included."""
    result = cli(store, "list", "--json", cwd=cwd)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def assert_each_point_restores(book: Path, store: Path) -> None:
    """Every snapshot in the store is ready, and a run of the notebook restores one of them."""
    rows = listed(store, book.parent)
    assert rows and all(row["state"] == "ready" for row in rows), rows
    assert run(book, store).summary["start"] == "restored"


def edit_last_setup_cell(book: Path, source: str) -> None:
    """Replace the last setup cell (the tagged one), keeping its tag."""
    content = nbformat.read(book, as_version=4)
    content.cells[2].source = source
    nbformat.write(content, book)


def test_a_build_killed_between_restore_points_leaves_only_restorable_ones_and_the_next_goes_on_from_them(
    tmp_path: Path,
) -> None:
    book, store = three_points(tmp_path, middle_seconds=20), tmp_path / "store"
    build = subprocess.Popen(
        [str(JUPYTER), "snapkernel", "--store", str(store), "build", str(book)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (store / "snapshots").is_dir() or not any((store / "snapshots").iterdir()):
            assert build.poll() is None and time.monotonic() < deadline, "the first restore point never came"
            time.sleep(0.1)
    finally:
        os.killpg(build.pid, signal.SIGKILL)  # in the middle cell's 20 s: after the first point, before the second
        build.wait()
    assert cli(store, "gc", cwd=tmp_path).returncode == 0
    assert [row["state"] for row in listed(store, tmp_path)] == ["ready"]
    three_points(tmp_path, middle_seconds=1.1)  # a faster middle cell: the first point still matches
    assert run(book, store).summary["restored_cells"] == 1
    rebuilt = cli(store, "build", str(book), cwd=tmp_path)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "from the restore point after setup cell 1" in rebuilt.stderr, rebuilt.stderr
    assert_each_point_restores(book, store)


def test_gc_after_a_rebuild_keeps_the_shared_points_and_the_earlier_end_which_still_restores(tmp_path: Path) -> None:
    book, store = three_points(tmp_path), tmp_path / "store"
    assert cli(store, "build", str(book), cwd=tmp_path).returncode == 0
    edit_last_setup_cell(book, "print('last', total % 11)")
    assert cli(store, "build", str(book), cwd=tmp_path).returncode == 0
    assert cli(store, "gc", cwd=tmp_path).returncode == 0
    rows = listed(store, tmp_path)
    assert len(rows) == 4 and all(row["state"] == "ready" for row in rows), rows  # two ends share the first two
    assert sum(row["parent"] is None for row in rows) == 1, rows
    assert run(book, store).summary["restored_cells"] is None
    edit_last_setup_cell(book, LAST)  # the edit undone: the earlier end restores whole again
    summary = run(book, store).summary
    assert (summary["start"], summary["restored_cells"]) == ("restored", None), summary


def test_a_quota_smaller_than_the_chain_keeps_the_points_that_fit_and_no_rebuild_loops(tmp_path: Path) -> None:
    book, store_root = three_points(tmp_path), tmp_path / "store"
    assert cli(store_root, "build", str(book), cwd=tmp_path).returncode == 0
    store = open_store(store_root)
    end = next(manifest for manifest in store.list() if manifest.labels["cells"] == "3")
    first_two = store.chain(end)[1:]
    quota = chain_bytes(first_two) + 1
    with pytest.raises(BuildError, match=r"with its restore points .* is larger than the quota"):
        keep_within_limits(store, end, quota, 0)
    assert {manifest.id for manifest in store.list()} == {manifest.id for manifest in first_two}
    state = notebook_file_state([store], book, quota_bytes=quota)
    assert (state.state, state.restored_cells, state.rebuild) == ("partial", 2, False), state
    assert any("larger than the quota" in reason for reason in state.reasons), state.reasons
    assert_each_point_restores(book, store_root)
