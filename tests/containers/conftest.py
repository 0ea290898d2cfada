"""The base image of the container tests, built once per test run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.containers.podman import IMAGE, REPO


@pytest.fixture(scope="session")
def base_image(request: pytest.FixtureRequest) -> str:
    """Build the offline base image (kept in podman storage, so only the first run pays for it)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: rootful podman, debootstrap, and a home folder chowned to uid 1000")
    prefix: Path = request.getfixturevalue("system_prefix")
    steps = [
        ("scripts/install-test-tools.sh", {}),
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
