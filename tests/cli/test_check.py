"""`jupyter snapkernel check` and `build --shared --check`: real builds, real cold and restored kernels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jupyter_snapkernel.paths import open_store
from tests.notebooks.harness import cli, notebook

# A hook that changes a value only in restored kernels: a restore difference made on purpose.
HOOKED_SETUP = [
    "from jupyter_snapkernel import after_restore\nthreshold = 10\n"
    "@after_restore\ndef loosen():\n    global threshold\n    threshold = 11"
]
HOOKED_AFTER = ["print('rows kept:', 3)", "print('threshold', threshold)", "print('after it')"]


def checked(book: Path, store: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    """Run `check --json` on a notebook; return the exit code, the JSON result and stderr."""
    result = cli(store, "check", "--json", *args, str(book), cwd=book.parent)
    lines = result.stdout.strip().splitlines()
    return result.returncode, json.loads(lines[-1]) if lines else {}, result.stderr


def test_check_reports_a_restore_difference_with_the_cell_both_outputs_and_the_hook_hint(tmp_path: Path) -> None:
    book = notebook(tmp_path / "hooked.ipynb", HOOKED_SETUP, HOOKED_AFTER)
    code, result, stderr = checked(book, tmp_path / "store")
    assert (code, result["state"], result["built"]) == (1, "different", True), (result, stderr)
    [difference] = result["differences"]  # both restored runs differ the same way: reported once
    assert (difference["cell"], difference["source"]) == (2, "print('threshold', threshold)")
    assert (difference["cold"], difference["restored"]) == ("threshold 10\n", "threshold 11\n")
    assert "@after_restore hook" in difference["hint"]

    shown = cli(tmp_path / "store", "check", str(book), cwd=tmp_path)  # the snapshot exists now: no build
    assert shown.returncode == 1
    assert "hooked.ipynb: restored runs differ from cold runs" in shown.stdout
    assert "cell 3: print('threshold', threshold)" in shown.stdout
    assert "cold:\n      threshold 10" in shown.stdout and "restored:\n      threshold 11" in shown.stdout


def test_check_tells_cold_runs_that_differ_apart_from_a_restore_difference(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "clock.ipynb",
        ["import time, random"],
        ["print('now', time.time_ns())", "print('draw', random.random())"],
    )
    code, result, _ = checked(book, tmp_path / "store")
    assert (code, result["state"]) == (3, "cold_differs"), result
    [difference] = result["differences"]
    assert difference["cell"] == 1 and difference["cold"] != difference["restored"]
    assert difference["hint"] == "cold runs differ too: not a restore difference"
    shown = cli(tmp_path / "store", "check", str(book), cwd=tmp_path)
    assert "cold runs differ too: not a restore difference" in shown.stdout


def test_check_finds_equal_runs_after_normalising_addresses_durations_and_progress(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "volatile.ipynb",
        ["import time, tempfile\nfrom tqdm import tqdm\nstarted = time.perf_counter()"],
        [
            "print(object())\nprint(f'took {time.perf_counter() - started:.3f} s')\n"
            "print(tempfile.NamedTemporaryFile(delete=False).name)",
            "%time total = sum(n for n in tqdm(range(3000)))\ntotal",
        ],
    )
    code, result, stderr = checked(book, tmp_path / "store", "--runs", "1")
    assert (code, result["state"], result["runs"]) == (0, "equal", 1), (result, stderr)


def test_check_of_a_notebook_without_setup_cells_says_why_it_cannot_compare(tmp_path: Path) -> None:
    book = notebook(tmp_path / "plain.ipynb", ["x = 1"], [])
    plain = json.loads(book.read_text())
    plain["cells"][0]["metadata"] = {}
    book.write_text(json.dumps(plain))
    code, result, _ = checked(book, tmp_path / "store")
    assert (code, result["state"]) == (4, "error")
    assert result["error"] == "plain.ipynb has no setup cell: tag one `snapshot` or start it with %%snapshot"


def test_build_shared_check_publishes_only_a_notebook_whose_restores_equal_cold(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    hooked = notebook(tmp_path / "hooked.ipynb", HOOKED_SETUP, HOOKED_AFTER)
    refused = cli(shared, "build", "--shared", "--check", "--quiet", str(hooked), cwd=tmp_path)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "error: hooked.ipynb was not published: its check found different" in refused.stderr
    assert "cell 3: print('threshold', threshold)" in refused.stdout
    assert not shared.exists() or open_store(shared).list() == [], "nothing was published"

    good = notebook(tmp_path / "good.ipynb", ["import math\nradius = 2"], ["print(round(math.pi * radius**2, 3))"])
    published = cli(shared, "build", "--shared", "--check", "--quiet", str(good), cwd=tmp_path)
    assert published.returncode == 0, published.stderr
    assert "check: restored runs equal cold runs" in published.stderr
    [manifest] = open_store(shared).list()
    assert manifest.labels["notebook"] == str(good)
