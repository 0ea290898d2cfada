"""Two nodes that share only a registry: podman containers as uid 1000, with the documented relaxations and stores
of their own, on the host's network where docker-registry listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers.podman import ALL_RELAXATIONS, HOME, UID, ContainerRun, run_container
from tests.helpers import PRINTING_SETUP, write_notebook
from tests.registry_server import PASSWORD, USER, Registry, write_auth_file

pytestmark = pytest.mark.xdist_group("containers")
REPOSITORY = "course/nodes"
STORE = f"{HOME}/.local/share/jupyter/snapkernel"
# Three notebooks: `quick` sets up in no time (a fetch is not expected to pay: the background), `slow` sleeps in
# its setup (its pull is shorter: the foreground, once a pull was measured), `elsewhere` gets a hardware
# annotation the test rewrites.
NOTEBOOKS = {
    "quick": [*PRINTING_SETUP, "import numpy as np\nblock = np.ones((2048, 2048))"],
    "slow": ["import time\ntime.sleep(8)\nslow_value = 5\nprint('slow setup done')"],
    "elsewhere": ["elsewhere_value = 7\nprint('elsewhere setup done')"],
}
AFTER = {
    "quick": "print(value * 2, block.sum())",
    "slow": "print(slow_value * 2)",
    "elsewhere": "print(elsewhere_value)",
}

NODE_A = r"""
set -u
mkdir -p out
for nb in quick slow elsewhere; do
    timeout 240 jupyter snapkernel build $nb.ipynb >out/build-$nb.out 2>&1; echo $? >out/build-$nb.rc
done
for f in out/*; do echo "== $f"; cat "$f"; done
"""

# The first run of `quick` starts cold and fetches in the background; once that fetch published the snapshot the
# next run restores it. Then `slow` is fetched before its first start, and `elsewhere` is never fetched.
NODE_B = r"""
set -u
mkdir -p out
run() { timeout 240 jupyter snapkernel run --json $1.ipynb >out/$2.json 2>out/$2.err; echo $? >out/$2.rc; }
run quick quick-1
for i in $(seq 1200); do [ -e "$STORE/snapshots/$QUICK_SNAPSHOT/manifest.json" ] && break; sleep 0.1; done
cp "$STORE"/builds/*.log out/ 2>/dev/null
run quick quick-2
run slow slow-1
run elsewhere elsewhere-1
ls "$STORE/snapshots" >out/snapshots
for f in out/*; do echo "== $f"; cat "$f"; done
"""


def node_home(registry: Registry) -> Path:
    """A host folder for one node's HOME (uid 1000): the notebooks, the registry's CA and credentials."""
    home = Path(tempfile.mkdtemp(prefix="snapkernel-node-", dir="/var/tmp"))
    home.chmod(0o755)
    for name, cells in NOTEBOOKS.items():
        write_notebook(home / f"{name}.ipynb", cells, marked=len(cells) - 1, after=[AFTER[name]])
    shutil.copy(registry.ca_file, home / "ca.pem")
    write_auth_file(home / "auth.json", registry.host, USER, PASSWORD)
    for path in [home, *home.rglob("*")]:
        os.chown(path, UID, UID)
    return home


@pytest.fixture
def nodes(registry: Registry) -> Iterator[tuple[Path, Path]]:
    """The homes of node A and node B, removed afterwards."""
    homes = (node_home(registry), node_home(registry))
    try:
        yield homes
    finally:
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def node_env(registry: Registry, **extra: str) -> dict[str, str]:
    """What each node is configured with: the trusted repository, its CA and the credentials file."""
    return {
        "SNAPKERNEL_REGISTRIES": registry.repository(REPOSITORY),
        "REQUESTS_CA_BUNDLE": f"{HOME}/ca.pem",
        "REGISTRY_AUTH_FILE": f"{HOME}/auth.json",
        "STORE": STORE,
        **extra,
    }


def built_snapshot(run: ContainerRun, name: str) -> str:
    """The id of the snapshot node A's build of a notebook printed."""
    assert run.code(f"build-{name}") == 0, run.output
    [line] = [line for line in run.text(f"build-{name}.out").splitlines() if line.startswith("snapshot ")]
    return line.split()[1].rstrip(":")


def test_node_b_restores_what_node_a_built_and_pushed_and_never_fetches_other_hardware(
    base_image: str, system_prefix: Path, registry: Registry, nodes: tuple[Path, Path]
) -> None:
    """Node A builds with push_on_build; node B's starts fetch: in the background when no pull was measured yet
    (its next start restores), before the start when the pull is expected shorter than the setup, and never
    when the artifact says other hardware."""
    home_a, home_b = nodes
    env_a = node_env(registry, SNAPKERNEL_PUSH_ON_BUILD="1")
    a = run_container(base_image, system_prefix, home_a, ALL_RELAXATIONS, NODE_A, network="host", env=env_a)
    assert a.returncode == 0, a.output
    snapshots = {name: built_snapshot(a, name) for name in NOTEBOOKS}
    assert all("pushed snapshot" in a.text(f"build-{name}.out") for name in NOTEBOOKS), a.output
    elsewhere = json.loads((home_a / STORE.removeprefix(f"{HOME}/") / "snapshots" / snapshots["elsewhere"] /
                            "manifest.json").read_text())["key"]  # fmt: skip
    registry.move_to_other_hardware(REPOSITORY, elsewhere)

    env_b = node_env(registry, QUICK_SNAPSHOT=snapshots["quick"])
    b = run_container(base_image, system_prefix, home_b, ALL_RELAXATIONS, NODE_B, network="host", env=env_b)
    assert b.returncode == 0, b.output
    quick_1, quick_2 = b.summary("quick-1"), b.summary("quick-2")
    assert quick_1["start"] == "cold" and "in the background, as no pull from" in quick_1["fetched"], b.output
    assert quick_2["start"] == "restored" and quick_2["snapshot"] == snapshots["quick"], b.output
    slow = b.summary("slow-1")
    assert slow["start"] == "restored" and slow["snapshot"] == snapshots["slow"], b.output
    assert slow["fetched"].startswith("fetched ") and "is shorter than its setup" in slow["fetched"], b.output
    other = b.summary("elsewhere-1")
    assert other["start"] == "cold" and "built for other hardware (cpu_model)" in other["fetched"], b.output
    assert snapshots["elsewhere"] not in b.text("snapshots").split(), b.output
    assert all(b.code(name) == 0 for name in ("quick-1", "quick-2", "slow-1", "elsewhere-1")), b.output
