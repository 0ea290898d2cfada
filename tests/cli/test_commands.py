"""`jupyter snapkernel build | list | run | bench | rm | gc` on a real notebook."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from tests.helpers import write_notebook

JUPYTER = Path(sys.executable).with_name("jupyter")
SETUP = ["import numpy as np\nweights = np.ones((500, 500))\nprint('weights ready')"]
AFTER = ["print('sum', weights.sum())"]


def snapkernel(*args: str, store: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPKERNEL_STORE": str(store)}
    result = subprocess.run(
        [str(JUPYTER), "snapkernel", *args], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return write_notebook(tmp_path / "small.ipynb", SETUP, marked=0, after=AFTER)


def test_build_list_run_rm_and_gc(tmp_path: Path, notebook: Path) -> None:
    store = tmp_path / "store"
    built = snapkernel("build", str(notebook), store=store)
    assert "running setup cell 1/1" in built.stderr
    assert built.stdout.startswith("snapshot ")

    listed = json.loads(snapkernel("list", "--json", store=store).stdout)
    assert len(listed) == 1
    entry = listed[0]
    assert {"id", "setup_hash", "hardware", "size_bytes", "created"} <= entry.keys()
    assert entry["size_bytes"] > 0

    output = tmp_path / "executed.ipynb"
    restored = json.loads(snapkernel("run", str(notebook), "--json", "--output", str(output), store=store).stdout)
    assert restored["start"] == "restored", restored
    assert restored["snapshot"] == entry["id"]
    assert restored["reason"] is None
    assert 0 < restored["kernel_ready_s"] <= restored["total_s"]
    executed = nbformat.read(output, as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "weights ready\n"
    assert executed.cells[1].outputs[0]["text"] == "sum 250000.0\n"

    cold = json.loads(snapkernel("run", str(notebook), "--cold", "--json", store=store).stdout)
    assert cold["start"] == "cold"
    assert cold["snapshot"] is None
    assert cold["reason"] == "cold start requested"

    snapkernel("rm", entry["id"], store=store)
    assert json.loads(snapkernel("list", "--json", store=store).stdout) == []
    missing = snapkernel("rm", entry["id"], store=store, check=False)
    assert missing.returncode == 1
    assert "no snapshot" in missing.stderr
    assert "deleted 0 snapshot(s)" in snapkernel("gc", "--max-age-days", "1", store=store).stdout


def test_build_verbose_says_where_the_time_of_each_snapshot_went(tmp_path: Path, notebook: Path) -> None:
    """`build --verbose` prints the stages of the snapshot, its CRIU dump being the one its manifest records."""
    store = tmp_path / "store"
    quiet = snapkernel("build", str(notebook), store=store)
    assert "where the time went" not in quiet.stderr
    built = snapkernel("build", "--verbose", "--from-top", str(notebook), store=store)
    [line] = [line for line in built.stderr.splitlines() if "where the time went: " in line]
    stages = {words: float(seconds) for words, seconds in re.findall(r"(?:: | · )([a-zA-Z ]+?) (\d+\.\d\d) s", line)}
    assert stages["setup cells"] > 0, line
    snapshot_id = built.stdout.split()[1].rstrip(":")
    manifest = json.loads((store / "snapshots" / snapshot_id / "manifest.json").read_text())
    assert stages["CRIU dump"] == pytest.approx(manifest["dump_duration_s"], abs=0.006), line
    checkpoint_s = float(re.search(r"\(checkpoint (\d+\.\d\d) s\)", line).group(1))  # type: ignore[union-attr]
    assert stages["CRIU dump"] <= checkpoint_s, line


def test_gc_limits_mean_what_the_servers_settings_mean(tmp_path: Path, notebook: Path) -> None:
    """A limit of 0 is no limit, as `SnapKernelSettings.quota_bytes = 0` is; a negative limit is refused."""
    store = tmp_path / "store"
    snapkernel("build", "--quiet", str(notebook), store=store)
    for option in ("--quota-bytes", "--max-age-days"):
        assert "deleted 0 snapshot(s)" in snapkernel("gc", option, "0", store=store).stdout
    assert len(json.loads(snapkernel("list", "--json", store=store).stdout)) == 1
    for option in ("--quota-bytes", "--max-age-days"):
        refused = snapkernel("gc", option, "-1", store=store, check=False)
        assert refused.returncode == 2, refused.stderr
        assert f"error: argument {option}: -1 is negative: give 0 (no limit) or more" in refused.stderr
    assert len(json.loads(snapkernel("list", "--json", store=store).stdout)) == 1


def test_bench_reports_cold_and_restored_medians(tmp_path: Path, notebook: Path) -> None:
    store = tmp_path / "store"
    snapkernel("build", "--quiet", str(notebook), store=store)
    result = json.loads(snapkernel("bench", str(notebook), "--runs", "1", "--json", store=store).stdout)
    assert result["runs"] == 1
    assert result["cold_s"] > 0 and result["restored_s"] > 0
    assert result["ratio"] == pytest.approx(result["cold_s"] / result["restored_s"], rel=0.05)


def test_build_of_a_notebook_without_setup_cell_says_how_to_mark_one(tmp_path: Path) -> None:
    plain = write_notebook(tmp_path / "plain.ipynb", ["x = 1"], marked=-1)
    result = snapkernel("build", str(plain), store=tmp_path / "store", check=False)
    assert result.returncode == 1
    assert "has no setup cell: tag one `snapshot` or start it with %%snapshot" in result.stderr
