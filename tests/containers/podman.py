"""Running snapkernel's machine-wide install as uid 1000 in rootful podman containers: the documented relaxations,
this VM's flags, and what a container run leaves in its mounted home."""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
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
ALL_RELAXATIONS = [*CAPABILITY, *RELAXATIONS["seccomp"], *RELAXATIONS["unmask"]]
# Not relaxations: what this VM needs for any podman run (rlimits podman cannot raise, crun against the hybrid
# cgroup layout). The network is each test's: none (the bridge network switches on ip forwarding), or the host's
# where a container must reach a registry on 127.0.0.1.
VM_FLAGS = [
    "--runtime", "runc",
    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768",
]  # fmt: skip


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


def run_container(
    image: str,
    prefix: Path,
    home: Path,
    relaxations: list[str],
    script: str,
    *,
    network: str = "none",
    env: dict[str, str] | None = None,
) -> ContainerRun:
    """Run `script` with bash as uid 1000 in one container; the container is removed whatever happens."""
    name = f"snapkernel-test-{secrets.token_hex(4)}"
    command = [
        "podman", "run", "--rm", "--name", name, *VM_FLAGS, "--network", network,
        "--user", f"{UID}:{UID}", *relaxations,
        "-v", f"{prefix}:{prefix}:ro", "-v", f"{home}:{HOME}",
        *(f"--env={variable}={value}" for variable, value in (env or {}).items()),
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
