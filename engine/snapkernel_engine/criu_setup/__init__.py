"""Install CRIU >= 4.0 and pycriu into a Python environment, and optionally grant a group capability mode."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ..errors import SnapshotError
from ..privileges import CAP_CRIU_IN_PREFIX

INSTALLER = Path(__file__).with_name("install-criu.sh")
PATCH_DIR = Path(__file__).with_name("patches")
GROUP_NAME = r"[A-Za-z_][A-Za-z0-9_.-]{0,31}"


class CriuSetupFailed(SnapshotError):
    """CRIU or pycriu could not be installed; the message says what to do."""


def default_build_dir() -> Path:
    """Where CRIU's source is fetched and built: ``$XDG_CACHE_HOME/snapkernel/criu`` or ``~/.cache/…``."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return root / "snapkernel" / "criu"


def prefix_python(prefix: Path) -> Path:
    """The interpreter of the environment at `prefix`: this one's when it is this process's environment."""
    if prefix.resolve() == Path(sys.prefix).resolve():
        return Path(sys.executable)
    for name in ("python3", "python"):
        candidate = prefix / "bin" / name
        if os.access(candidate, os.X_OK):
            return candidate
    raise CriuSetupFailed(f"{prefix} has no bin/python3: --prefix must be a Python environment (a venv)")


def capability_criu_path(prefix: Path, python: Path) -> Path:
    """Where capability_criu() looks when snapkernel runs from `prefix` (its $SNAPKERNEL_CRIU_CAP aside)."""
    if python == Path(sys.executable):
        return Path(sys.prefix) / CAP_CRIU_IN_PREFIX
    result = subprocess.run(
        [str(python), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0 or not result.stdout.strip():
        raise CriuSetupFailed(f"{python} does not run: --prefix must be a working Python environment")
    return Path(result.stdout.strip()) / CAP_CRIU_IN_PREFIX


def rerun_command(prefix: Path, build_dir: Path | None, grant_group: str | None = None) -> str:
    """The command line that runs this installation again, for messages that say to rerun it as root."""
    command = [str(Path(sys.prefix) / "bin" / "jupyter"), "snapkernel", "install-criu", "--prefix", str(prefix)]
    if build_dir:
        command += ["--build-dir", str(build_dir)]
    return shlex.join([*command, "--grant-group", grant_group] if grant_group else command)


def install(
    prefix: str | os.PathLike[str] | None = None,
    build_dir: str | os.PathLike[str] | None = None,
    grant_group: str | None = None,
) -> None:
    """Give `prefix` (default: this one) CRIU 4.x in bin/criu and pycriu; with `grant_group`, capability mode too."""
    prefix_path = Path(os.path.abspath(prefix if prefix is not None else sys.prefix))
    build_path = Path(os.path.abspath(build_dir if build_dir is not None else default_build_dir()))
    again = rerun_command(prefix_path, build_path if build_dir is not None else None, grant_group)
    if grant_group is not None and not re.fullmatch(GROUP_NAME, grant_group):
        raise CriuSetupFailed(f"--grant-group {grant_group!r} is not a group name (letters, digits, _ . -)")
    if grant_group is not None and os.geteuid() != 0:
        raise CriuSetupFailed(
            f"--grant-group needs root: it creates group {grant_group!r} and gives a criu copy a file capability: "
            f"run `sudo {again}`"
        )
    python = prefix_python(prefix_path)
    cap_criu = capability_criu_path(prefix_path, python) if grant_group is not None else None
    bin_dir = prefix_path / "bin"
    if not os.access(bin_dir, os.W_OK):
        raise CriuSetupFailed(f"cannot write to {bin_dir}: run it as its owner, or as root: `sudo {again}`")
    try:
        build_path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CriuSetupFailed(
            f"cannot create the build folder {build_path}: {error.strerror} (choose --build-dir)"
        ) from error
    env = {
        **os.environ,
        "PREFIX": str(prefix_path),
        "PYTHON": str(python),
        "BUILD_DIR": str(build_path),
        "PATCH_DIR": str(PATCH_DIR),
        "RERUN_COMMAND": again,
        "GRANT_GROUP": grant_group or "",
        "CAP_CRIU": str(cap_criu or ""),
    }
    sys.stdout.flush()
    result = subprocess.run(["bash", str(INSTALLER)], env=env, check=False)
    if result.returncode != 0:
        raise CriuSetupFailed(f"installing CRIU into {prefix_path} failed (exit {result.returncode}; see above)")
