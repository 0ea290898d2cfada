"""A store that cannot be written says so in one clear line that names no path: read-only, out of space, out of
inodes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel.notebook.state import notebook_file_state
from jupyter_snapkernel.paths import open_store
from tests.helpers import build, run_json, snapkernel, write_notebook

SETUP = ["value = 21"]
BIG_SETUP = ["import numpy as np\nvalue = np.ones(10_000_000)"]  # 80 MB: more than the small disk holds


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Mount tmpfs file systems with the given options; each is unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"disk-{len(mounted)}"
        point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], check=True)
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=False)


def test_a_read_only_store_gives_a_cold_start_with_one_clear_line(tmp_path: Path, tmpfs: Any) -> None:
    """A good snapshot in a store that became read-only: cold, saying so and what to do; no errno, no path."""
    disk = tmpfs("size=64m")
    notebook = write_notebook(tmp_path / "analysis.ipynb", SETUP, marked=0, after=["print(value * 2)"])
    snapshot = build(notebook, disk / "store")
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
    code, summary, _ = run_json(notebook, disk / "store")
    assert code == 0 and summary["start"] == "cold", summary
    assert summary["reason"] == (
        f"restore of snapshot {snapshot} failed: a restore cannot create its work folder in the snapshot store "
        "(Read-only file system): the store is on a read-only file system: make it writable, or use a writable "
        "store (SNAPKERNEL_STORE) and list this one as a shared root; the next start tries this snapshot again"
    ), summary["reason"]


def test_a_store_out_of_inodes_says_inodes_not_space(tmp_path: Path, tmpfs: Any) -> None:
    """Plenty of bytes free but no room for more files: the message names inodes, not a size."""
    disk = tmpfs("size=256m,nr_inodes=24")
    notebook = write_notebook(tmp_path / "analysis.ipynb", SETUP, marked=0)
    built = snapkernel("build", "--quiet", str(notebook), store=disk / "store")
    assert built.returncode == 1 and "Traceback" not in built.stderr, built.stderr
    [line] = built.stderr.strip().splitlines()
    assert line.startswith("error: could not write the snapshot into the snapshot store: its file system has run out "
                           "of inodes (room for "), line  # fmt: skip
    assert "it needs about" not in line and str(disk) not in line, line


def test_status_reasons_name_no_store_path(tmp_path: Path, tmpfs: Any) -> None:
    """A build that failed for want of space: the notebook's state and cold reason say why without the store's path."""
    disk = tmpfs("size=24m")
    notebook = write_notebook(tmp_path / "analysis.ipynb", BIG_SETUP, marked=0)
    built = snapkernel("build", "--quiet", str(notebook), store=disk / "store")
    assert built.returncode == 1 and "No space left on device" in built.stderr, built.stderr
    state = notebook_file_state([open_store(disk / "store")], notebook)
    assert state.state == "failed" and state.cold_reason is not None, state
    assert state.cold_reason.startswith("the last snapshot build failed: could not write the snapshot into the "
                                        "snapshot store: No space left on device"), state.cold_reason  # fmt: skip
    for said in [state.cold_reason, *state.reasons]:
        assert str(disk) not in said and str(tmp_path) not in said, said
