"""Snapshots through a real registry (docker-registry, TLS and htpasswd, on 127.0.0.1): push, pull into an empty
store, restore; and what is refused: a wrong password, a blob changed on the registry's disk, other hardware."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from jupyter_snapkernel.notebook.setup_section import read_setup_section
from tests.helpers import AFTER_SETUP, SETUP_CELLS, build, outputs, run_json, snapkernel, write_notebook
from tests.registry_server import PASSWORD, USER, Registry, write_auth_file

AFTER_CELLS = [AFTER_SETUP, "print(matrix[3, 7], len(sockets_at_build) >= 0, ticks[0] > 0)"]


def pushed_notebook(registry: Registry, tmp_path: Path, repository: str) -> tuple[Path, str, str]:
    """Build a notebook's snapshot in a store of its own and push it: (the notebook, the snapshot, the repository)."""
    notebook = write_notebook(tmp_path / "nb.ipynb", SETUP_CELLS, marked=1, after=AFTER_CELLS)
    snapshot = build(notebook, tmp_path / "builder")
    reference = registry.repository(repository)
    pushed = snapkernel("push", snapshot, reference, store=tmp_path / "builder", env=registry.env())
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    assert f"pushed snapshot {snapshot}" in pushed.stdout, pushed.stdout
    return notebook, snapshot, reference


def setup_key(notebook: Path) -> str:
    """The setup key of a notebook's whole setup section."""
    section = read_setup_section(notebook)
    assert section is not None
    return section.setup_hash


def texts(notebook: Path) -> list[list[str]]:
    """What each code cell of an executed notebook printed (all of it, however the kernel split it into stream
    messages) and returned."""
    book = json.loads(notebook.read_text())
    shown = []
    for cell in book["cells"]:
        printed = "".join("".join(output["text"]) for output in outputs(cell, "stream"))
        results = ["".join(output["data"].get("text/plain", "")) for output in outputs(cell, "execute_result")]
        shown.append(([printed] if printed else []) + results)
    return shown


def stored_snapshots(store: Path) -> list[str]:
    """The snapshot folders of a store (none if it has no snapshots folder)."""
    folder = store / "snapshots"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_a_pushed_snapshot_pulled_into_an_empty_store_restores_with_a_cold_runs_outputs(
    registry: Registry, tmp_path: Path
) -> None:
    """push, pull --notebook into an empty store, run: restored from the pushed snapshot, outputs equal to cold."""
    notebook, snapshot, reference = pushed_notebook(registry, tmp_path, "course/setup")
    node = tmp_path / "node"
    pulled = snapkernel("pull", "--notebook", str(notebook), reference, store=node, env=registry.env())
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    assert f"pulled snapshot {snapshot}" in pulled.stdout
    assert stored_snapshots(node) == [snapshot]

    restored_out, cold_out = tmp_path / "restored.ipynb", tmp_path / "cold.ipynb"
    code, restored, _ = run_json(notebook, node, "--output", str(restored_out))
    assert code == 0 and restored["start"] == "restored" and restored["snapshot"] == snapshot, restored
    code, cold, _ = run_json(notebook, node, "--cold", "--output", str(cold_out))
    assert code == 0 and cold["start"] == "cold", cold
    assert texts(restored_out) == texts(cold_out)
    assert texts(restored_out)[-2:] == [["after setup 43\n"], ["3007.0 True True\n"]]


def test_a_wrong_password_gives_one_line_naming_the_registry(registry: Registry, tmp_path: Path) -> None:
    """The registry refuses the stored credentials: exit 1, one line that names the registry, nothing stored."""
    notebook, _, reference = pushed_notebook(registry, tmp_path, "course/password")
    wrong = write_auth_file(tmp_path / "wrong.json", registry.host, USER, PASSWORD + "-not")
    env = {**registry.env(), "REGISTRY_AUTH_FILE": str(wrong)}
    node = tmp_path / "node"
    pulled = snapkernel("pull", "--notebook", str(notebook), reference, store=node, env=env)
    assert pulled.returncode == 1
    assert pulled.stderr.splitlines() == [
        f"error: registry {registry.host}: refused the credentials stored for it (401 Unauthorized): log in again"
    ]
    assert stored_snapshots(node) == []


def test_a_blob_changed_on_the_registrys_disk_is_refused_and_nothing_is_published(
    registry_of_its_own: Registry, tmp_path: Path
) -> None:
    """One byte of the largest blob flipped on the registry's disk: the pull names that blob, and the store holds
    no snapshot and no staging leftover."""
    registry = registry_of_its_own
    notebook, _, reference = pushed_notebook(registry, tmp_path, "course/tampered")
    manifest = registry.manifest("course/tampered", registry.tag_holding("course/tampered", setup_key(notebook)))
    largest = max(manifest["layers"], key=lambda layer: layer["size"])
    blob = registry.blob_file(largest["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))

    node = tmp_path / "node"
    pulled = snapkernel("pull", "--notebook", str(notebook), reference, store=node, env=registry.env())
    assert pulled.returncode == 1
    assert pulled.stderr.splitlines() == [
        f"error: blob {largest['digest'][:19]} of {largest['annotations']['org.opencontainers.image.title']} does "
        "not match its digest: the registry's copy is damaged or was changed"
    ]
    assert stored_snapshots(node) == []
    assert not any((node / "staging").iterdir())


def test_a_snapshot_built_for_other_hardware_is_never_fetched(registry: Registry, tmp_path: Path) -> None:
    """The artifact's hardware annotation, rewritten by the test, differs from this machine's: neither `pull` nor a
    start with the repository trusted fetches it, and both say why."""
    notebook, _, reference = pushed_notebook(registry, tmp_path, "course/hardware")
    registry.move_to_other_hardware("course/hardware", setup_key(notebook))

    node = tmp_path / "node"
    pulled = snapkernel("pull", "--notebook", str(notebook), reference, store=node, env=registry.env())
    assert pulled.returncode == 1
    assert "not fetched: built for other hardware (cpu_model)" in pulled.stderr, pulled.stderr
    env = {**registry.env(), "SNAPKERNEL_REGISTRIES": reference, "SNAPKERNEL_AUTO_BUILD": "0"}
    code, started, _ = run_json(notebook, node, env=env)
    assert code == 0 and started["start"] == "cold", started
    assert "not fetched: built for other hardware (cpu_model)" in started["reason"], started
    assert stored_snapshots(node) == []


def test_a_registry_that_cannot_be_reached_leaves_the_start_cold_and_says_so(tmp_path: Path) -> None:
    """A trusted repository on a port where nothing listens: the start is cold, names the registry, and a build
    still follows (nothing was fetched)."""
    with socket.socket() as probe:  # a port that was free a moment ago, and that nobody listens on
        probe.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{probe.getsockname()[1]}"
    notebook = write_notebook(tmp_path / "nb.ipynb", ["value = 21"], marked=0, after=["print(value * 2)"])
    env = {"SNAPKERNEL_REGISTRIES": f"{host}/course/none", "SNAPKERNEL_AUTO_BUILD": "0"}
    code, started, _ = run_json(notebook, tmp_path / "store", env=env)
    assert code == 0 and started["start"] == "cold", started
    assert started["fetched"].startswith(f"registry {host}: cannot be reached ("), started
    assert started["reason"] == f"no snapshot yet; {started['fetched']}", started
