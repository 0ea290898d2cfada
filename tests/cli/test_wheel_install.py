"""The wheel sets itself up: installed alone into a fresh venv, `jupyter snapkernel install-criu` builds CRIU 4
and pycriu into it, after which `doctor` passes and a notebook's kernel is restored.

The slow "wheel" test: it builds the wheel, installs its dependencies from PyPI and compiles CRIU (minutes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tests.helpers import helper_processes, write_notebook

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(2400)]

REPO = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = Path("/usr/bin/python3")
# Debian's orig tarball that `make setup` downloaded: copied into the fresh build folder, so nothing is fetched.
CACHED_TARBALLS = sorted((REPO / "build" / "criu").glob("criu_*.orig.tar.*"))
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INSTALL_FIX = "fix: run `jupyter snapkernel install-criu`"


def clean_environment(venv: Path, tmp_path: Path) -> dict[str, str]:
    """An environment that sees only the fresh venv and the system: no dev venv, no $SNAPKERNEL_*, no Jupyter paths."""
    dropped = ("SNAPKERNEL_", "JUPYTER", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "CONDA_")
    env = {key: value for key, value in os.environ.items() if not key.startswith(dropped)}
    env.update(
        {
            "PATH": f"{venv / 'bin'}:{SYSTEM_PATH}",
            "SNAPKERNEL_STORE": str(tmp_path / "store"),
            "JUPYTER_DATA_DIR": str(tmp_path / "jupyter-data"),
            "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config"),
            "JUPYTER_RUNTIME_DIR": str(tmp_path / "jupyter-runtime"),
        }
    )
    return env


def run(command: list[str | Path], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command to its end and return what it printed."""
    return subprocess.run(
        [str(part) for part in command], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def shown(result: subprocess.CompletedProcess[str]) -> str:
    """A finished command's output, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"


def build_wheel(wheel_dir: Path) -> Path:
    """Build the wheel of the working tree (the labextension prebuilt by `make setup` is reused) and return it."""
    result = run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheel_dir, REPO], dict(os.environ), 900
    )
    assert result.returncode == 0, shown(result)
    [wheel] = wheel_dir.glob("jupyter_snapkernel-*.whl")
    return wheel


def criu_4_works(binary: str) -> bool:
    """Whether a CRIU binary is version 4 or later and `criu check` passes."""
    version = run([binary, "--version"], dict(os.environ), 60).stdout
    major = version.partition("Version: ")[2].split(".")[0]
    return major.isdigit() and int(major) >= 4 and run([binary, "check"], dict(os.environ), 60).returncode == 0


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """The test's folder, removed at the end with the venv, the CRIU build and the store in it."""
    if os.geteuid() != 0:
        pytest.skip("runs as root: install-criu installs CRIU's build dependencies with apt")
    system_criu = shutil.which("criu", path=SYSTEM_PATH)
    if system_criu and criu_4_works(system_criu):
        pytest.skip(f"{system_criu} is a working CRIU 4: install-criu would use it instead of building one")
    yield tmp_path
    deadline = time.monotonic() + 10
    while helper_processes(tmp_path / "store") and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = helper_processes(tmp_path / "store")
    shutil.rmtree(tmp_path, ignore_errors=True)
    assert leftovers == [], "processes outlived the test"


def test_a_wheel_installed_alone_sets_up_criu_with_its_own_command_and_restores(workspace: Path) -> None:
    """pip install WHEEL; doctor names install-criu; install-criu builds CRIU 4 and pycriu; doctor passes; restore."""
    wheel = build_wheel(workspace / "wheel")
    top_level = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {name for name in top_level if not name.endswith((".dist-info", ".data"))}
    assert packages == {"jupyter_snapkernel", "snapkernel_engine"}, "only names the project owns"
    venv = workspace / "venv"
    created = run([SYSTEM_PYTHON, "-m", "venv", venv], dict(os.environ), 300)
    assert created.returncode == 0, f"Debian's python3-venv is needed:\n{shown(created)}"
    env = clean_environment(venv, workspace)
    installed = run([venv / "bin" / "python", "-m", "pip", "install", "-q", wheel], env, 1200)
    assert installed.returncode == 0, shown(installed)
    jupyter = venv / "bin" / "jupyter"
    store = workspace / "store"

    # What a wheel user has at first: no CRIU 4 and no pycriu in sight, and doctor names the command to run.
    assert not (venv / "bin" / "criu").exists()
    assert run([venv / "bin" / "python", "-c", "import pycriu"], env, 60).returncode != 0
    doctor = run([jupyter, "snapkernel", "--store", store, "doctor"], env, 300)
    assert doctor.returncode != 0, shown(doctor)
    assert "CPU snapshots: NOT available" in doctor.stdout, shown(doctor)
    assert INSTALL_FIX in doctor.stdout, shown(doctor)

    build_dir = workspace / "criu-build"
    build_dir.mkdir()
    for tarball in CACHED_TARBALLS:
        shutil.copy2(tarball, build_dir / tarball.name)
    setup = run([jupyter, "snapkernel", "install-criu", "--build-dir", build_dir], env, 1800)
    assert setup.returncode == 0, shown(setup)
    assert "building CRIU" in setup.stdout, shown(setup)
    assert (build_dir / "criu-4.2.1" / "criu" / "criu").is_file()
    version = run([venv / "bin" / "criu", "--version"], env, 60)
    assert "Version: 4." in version.stdout, shown(version)
    pycriu = run([venv / "bin" / "python", "-c", "import pycriu; print(pycriu.__file__)"], env, 60)
    assert pycriu.returncode == 0 and str(venv) in pycriu.stdout, shown(pycriu)

    doctor = run([jupyter, "snapkernel", "--store", store, "doctor"], env, 300)
    assert doctor.returncode == 0, shown(doctor)
    assert "CPU snapshots: ready" in doctor.stdout, shown(doctor)
    assert f"{venv / 'bin' / 'criu'} (CRIU 4." in doctor.stdout, shown(doctor)

    notebook = write_notebook(
        workspace / "setup.ipynb", ["value = 21\nprint('setup done')"], marked=0, after=["print(value * 2)"]
    )
    built = run([jupyter, "snapkernel", "--store", store, "build", "--quiet", notebook], env, 600)
    assert built.returncode == 0, shown(built)
    snapshot = built.stdout.split()[1].rstrip(":")
    output = workspace / "out.ipynb"
    ran = run([jupyter, "snapkernel", "--store", store, "run", notebook, "--json", "--output", output], env, 600)
    assert ran.returncode == 0, shown(ran)
    summary = json.loads(ran.stdout)
    assert (summary["start"], summary["snapshot"]) == ("restored", snapshot), shown(ran)
    executed = nbformat.read(output, as_version=4)
    assert [output["text"] for output in executed.cells[1].outputs] == ["42\n"]
