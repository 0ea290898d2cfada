"""snapkernel as uid 1000 in a podman container, with the documented relaxations and without each of them."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.podman import ALL_RELAXATIONS, CAPABILITY, RELAXATIONS, UID, run_container
from tests.helpers import AFTER_SETUP, SETUP_CELLS, write_notebook

# One test worker runs them all: the base image is built once, by the worker that holds them.
pytestmark = pytest.mark.xdist_group("containers")

# Runs inside the container, in $HOME: doctor, build, then two headless runs at once.
# Every result goes to $HOME/out (read by the test from the host) and is printed.
FULL_SCRIPT = r"""
set -u
mkdir -p out
jupyter snapkernel doctor --json >out/doctor.json 2>out/doctor.err; echo $? >out/doctor.rc
timeout 240 jupyter snapkernel build nb.ipynb >out/build.out 2>&1; echo $? >out/build.rc
for i in 1 2; do
    (
        date +%s.%N >out/run$i.start
        timeout 240 jupyter snapkernel run --json nb.ipynb >out/run$i.json 2>out/run$i.err
        echo $? >out/run$i.rc
        date +%s.%N >out/run$i.end
    ) &
done
wait
for f in out/*; do echo "== $f"; cat "$f"; done
"""

# Without a relaxation: doctor, then one headless run (no build: it cannot snapshot).
DEGRADED_SCRIPT = r"""
set -u
mkdir -p out
jupyter snapkernel doctor --json >out/doctor.json 2>out/doctor.err; echo $? >out/doctor.rc
timeout 240 jupyter snapkernel run --json nb.ipynb >out/run.json 2>out/run.err; echo $? >out/run.rc
for f in out/*; do echo "== $f"; cat "$f"; done
"""


@pytest.fixture
def container_home() -> Iterator[Path]:
    """A host folder owned by uid 1000 holding the notebook, mounted as the container user's HOME."""
    # Not under /tmp/pytest-of-root (0700): uid 1000 must be able to reach it.
    home = Path(tempfile.mkdtemp(prefix="snapkernel-container-", dir="/var/tmp"))
    try:
        home.chmod(0o755)
        write_notebook(home / "nb.ipynb", SETUP_CELLS, marked=1, after=[AFTER_SETUP])
        for path in [home, *home.rglob("*")]:
            os.chown(path, UID, UID)
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_container_as_uid_1000_builds_and_restores_twice_at_once(
    base_image: str, system_prefix: Path, container_home: Path
) -> None:
    """With every relaxation, uid 1000 gets capability mode, builds, and two concurrent runs both restore."""
    run = run_container(base_image, system_prefix, container_home, ALL_RELAXATIONS, FULL_SCRIPT)
    assert run.returncode == 0, run.output

    doctor = run.doctor()
    assert run.code("doctor") == 0, run.output
    assert doctor["mode"] == "capability", run.output
    assert "CAP_CHECKPOINT_RESTORE" in doctor["detail"], run.output
    assert doctor["cpu_snapshots"] is True, run.output

    assert run.code("build") == 0, run.output
    first, second = run.summary("run1"), run.summary("run2")
    assert run.code("run1") == run.code("run2") == 0, run.output
    assert first["start"] == second["start"] == "restored", run.output
    snapshots = sorted(path.name for path in (container_home / ".local/share/jupyter/snapkernel/snapshots").iterdir())
    assert len(snapshots) == 1, (snapshots, run.output)
    assert f"snapshot {snapshots[0]}" in run.text("build.out"), run.output
    assert first["snapshot"] == second["snapshot"] == snapshots[0], run.output
    assert first["cells"] == second["cells"] == len(SETUP_CELLS) + 1, run.output
    # the two runs overlapped in time
    spans = [(float(run.text(f"run{i}.start")), float(run.text(f"run{i}.end"))) for i in (1, 2)]
    assert spans[0][0] < spans[1][1] and spans[1][0] < spans[0][1], spans


@pytest.mark.parametrize("missing", sorted(RELAXATIONS))
def test_container_without_a_relaxation_names_it_and_starts_cold(
    base_image: str, system_prefix: Path, container_home: Path, missing: str
) -> None:
    """Without one relaxation, doctor says unavailable and names it, and a run starts cold with the same name."""
    relaxations = [*CAPABILITY, *(arg for name, args in RELAXATIONS.items() if name != missing for arg in args)]
    run = run_container(base_image, system_prefix, container_home, relaxations, DEGRADED_SCRIPT)
    assert run.returncode == 0, run.output

    doctor = run.doctor()
    assert run.code("doctor") == 1, run.output
    assert doctor["mode"] == "unavailable", run.output
    assert doctor["cpu_snapshots"] is False, run.output
    named = f"{doctor['detail']} {doctor['fix']}"
    assert missing in named, run.output
    # it names the missing relaxation, not the one that is there
    assert all(other not in named for other in RELAXATIONS if other != missing), run.output

    started = run.summary("run")
    assert run.code("run") == 0, run.output
    assert started["start"] == "cold", run.output
    assert started["snapshot"] is None, run.output
    assert missing in (started["reason"] or ""), run.output
