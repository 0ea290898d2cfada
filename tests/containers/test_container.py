"""snapkernel as uid 1000 in a podman container, with the documented relaxations and without each of them."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import AFTER_SETUP, SETUP_CELLS, write_notebook

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# One test worker runs them all: the base image is built once, by the worker that holds them.
pytestmark = pytest.mark.xdist_group("containers")
IMAGE = "snapkernel-base:bookworm"
UID = 1000
HOME = "/home/user"  # the image's home of uid 1000; a host folder is mounted over it
CONTAINER_TIMEOUT = 300  # seconds, for one `podman run`

# The relaxations snapkernel documents for containers, each named as doctor names it.
RELAXATIONS: dict[str, list[str]] = {
    "seccomp": ["--security-opt", "seccomp=unconfined"],
    "unmask": ["--security-opt", "unmask=/proc/*"],
}
CAPABILITY = ["--cap-drop", "ALL", "--cap-add", "CHECKPOINT_RESTORE"]
# Not relaxations: what this VM needs for any podman run (rlimits podman cannot raise, crun
# against the hybrid cgroup layout, no bridge network).
VM_FLAGS = [
    "--runtime", "runc", "--network", "none",
    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
]  # fmt: skip

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


@dataclass
class ContainerRun:
    """What one `podman run` left in the mounted home."""

    returncode: int
    output: str
    out: Path

    def text(self, name: str) -> str:
        """The content of out/NAME."""
        return (self.out / name).read_text()

    def code(self, name: str) -> int:
        """The exit code recorded in out/NAME.rc."""
        return int(self.text(f"{name}.rc"))

    def doctor(self) -> dict[str, Any]:
        """The JSON that `doctor --json` printed."""
        try:
            return json.loads(self.text("doctor.json"))
        except json.JSONDecodeError as error:
            raise AssertionError(f"doctor printed no JSON ({error}):\n{self.output}") from error

    def summary(self, name: str) -> dict[str, Any]:
        """The JSON summary line that `run --json` wrote to out/NAME.json."""
        lines = [line for line in self.text(f"{name}.json").splitlines() if line.startswith("{")]
        assert lines, f"no JSON summary in {name}.json:\n{self.output}"
        return json.loads(lines[-1])


@pytest.fixture(scope="session")
def base_image(request: pytest.FixtureRequest) -> str:
    """Build the offline base image (kept in podman storage, so only the first run pays for it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: rootful podman, debootstrap, and a home folder chowned to uid 1000")
    prefix: Path = request.getfixturevalue("system_prefix")
    steps = [
        ("scripts/install-podman.sh", {}),
        # the image must hold the libraries of the criu binary that gets mounted
        ("tests/containers/base_image.sh", {"IMAGE": IMAGE, "CRIU": str(prefix / "bin" / "criu")}),
    ]
    for script, env in steps:
        result = subprocess.run(
            ["bash", str(REPO / script)],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert result.returncode == 0, f"{script} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return IMAGE


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


def run_container(image: str, prefix: Path, home: Path, relaxations: list[str], script: str) -> ContainerRun:
    """Run `script` with bash as uid 1000 in one container; the container is removed whatever happens."""
    name = f"snapkernel-test-{secrets.token_hex(4)}"
    command = [
        "podman", "run", "--rm", "--name", name, *VM_FLAGS,
        "--user", f"{UID}:{UID}", *relaxations,
        "-v", f"{prefix}:{prefix}:ro", "-v", f"{home}:{HOME}",
        "-e", f"HOME={HOME}", "-e", f"PATH={prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin", "-w", HOME,
        image, "bash", "-c", script,
    ]  # fmt: skip
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=CONTAINER_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as error:
        done = sorted(path.name for path in (home / "out").glob("*"))
        raise AssertionError(f"container still running after {CONTAINER_TIMEOUT} s; results so far: {done}") from error
    finally:
        # --rm does not cover a podman client killed by the timeout
        subprocess.run(["podman", "rm", "--force", "--ignore", "--time", "0", name], capture_output=True, check=False)
    output = f"$ {' '.join(command[:-1])} SCRIPT\n{result.stdout}{result.stderr}"
    return ContainerRun(result.returncode, output, home / "out")


def test_container_as_uid_1000_builds_and_restores_twice_at_once(
    base_image: str, system_prefix: Path, container_home: Path
) -> None:
    """With every relaxation, uid 1000 gets capability mode, builds, and two concurrent runs both restore."""
    relaxations = [*CAPABILITY, *RELAXATIONS["seccomp"], *RELAXATIONS["unmask"]]
    run = run_container(base_image, system_prefix, container_home, relaxations, FULL_SCRIPT)
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
