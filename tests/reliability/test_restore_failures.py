"""Restores that fail: a passing cause (out of memory) keeps the snapshot; a changed input rebuilds it once."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_snapkernel.launch.background_builds import background_builds
from tests.helpers import JUPYTER, build, snapkernel, write_notebook

CGROUP_ROOT = Path("/sys/fs/cgroup")
BIG_SETUP = ["big = bytearray(500 * 1024 * 1024)\nfor page in range(0, len(big), 4096):\n    big[page] = 1"]
LIBRARY_SOURCE = "int answer(void) {{ return {value}; }}\n"
LIBRARY_SETUP = ["import ctypes\nanswer = ctypes.CDLL('./libanswer.so').answer"]


@pytest.fixture
def jp_server_config(store_root: Path) -> Config:
    """The extension with automatic builds on, as users get it."""
    settings = {"store_root": str(store_root), "auto_build": True, "spare_kernels": False}
    return Config({"ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}}, "SnapKernelSettings": settings})


async def builds_of(notebook: Path) -> list[Any]:
    """The server's builds of a notebook, once none of them is running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        builds = [build for build in background_builds.builds.values() if build.notebook == notebook]
        if all(build.state != "building" for build in builds):
            return builds
        await asyncio.sleep(0.1)
    raise AssertionError("a build did not finish")


def snapshot_states(store: Path) -> list[tuple[str, str, list[str]]]:
    """(id, state, reasons) of every snapshot in a store, as `list --json` gives them."""
    listed = snapkernel("list", "--json", store=store)
    assert listed.returncode == 0, listed.stderr
    return [(entry["id"], entry["state"], entry["reasons"]) for entry in json.loads(listed.stdout)]


def start_reason(session: Any) -> str:
    """Why the server's provisioner started a kernel cold."""
    return str(session.manager.provisioner.start_report["reason"])


# -- out of memory ---------------------------------------------------------------------------------


def _memory_cgroup_folder(name: str) -> tuple[Path, dict[str, str]]:
    """Where to make a memory cgroup on this machine (v2, or v1 in a hybrid layout), and its limit files."""
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in (CGROUP_ROOT / "cgroup.subtree_control").read_text().split():
        return CGROUP_ROOT / name, {"memory.max": "{limit}", "memory.swap.max": "0"}
    if (CGROUP_ROOT / "memory" / "cgroup.procs").exists():
        return CGROUP_ROOT / "memory" / name, {"memory.limit_in_bytes": "{limit}", "memory.swappiness": "0"}
    pytest.skip("no memory cgroup controller here to limit a restore with")


@contextmanager
def memory_cgroup(limit_bytes: int) -> Iterator[list[str]]:
    """A fresh memory cgroup of `limit_bytes`; yields a command prefix that runs a command inside it."""
    folder, limits = _memory_cgroup_folder(f"snapkernel-test-{secrets.token_hex(4)}")
    folder.mkdir()
    try:
        for name, value in limits.items():
            if (folder / name).exists():
                (folder / name).write_text(value.format(limit=limit_bytes))
        yield ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$@"', "sh"]
    finally:
        deadline = time.monotonic() + 30
        while (folder / "cgroup.procs").read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        folder.rmdir()


def test_an_out_of_memory_restore_keeps_the_snapshot_and_the_next_start_restores(tmp_path: Path) -> None:
    """The memory cgroup's OOM killer ends the restore: cold with that reason, no mark, no rebuild; then restored."""
    notebook = write_notebook(tmp_path / "big.ipynb", BIG_SETUP, marked=0, after=["print(len(big))"])
    store = tmp_path / "store"
    snapshot = build(notebook, store)
    environment = {**os.environ, "SNAPKERNEL_STORE": str(store), "SNAPKERNEL_AUTO_BUILD": "1"}
    command = [str(JUPYTER), "snapkernel", "run", "--json", str(notebook)]
    # The OOM killer ends the largest process of the cgroup: the restoring kernel (about 200 MB when the limit is
    # reached) rather than `run` itself (about 70 MB). The cold kernel's setup cell dies of the same limit later:
    # only how the kernel started matters here.
    with memory_cgroup(300 * 1024 * 1024) as inside:
        limited = subprocess.run(
            [*inside, *command], capture_output=True, text=True, timeout=300, env=environment, check=False
        )
    summary = json.loads(limited.stdout)
    assert summary["start"] == "cold", summary
    assert summary["reason"].startswith(
        f"restore of snapshot {snapshot} failed (out of memory; the next start tries this snapshot again)"
    ), summary["reason"]
    assert snapshot_states(store) == [(snapshot, "ready", [])], "not marked, not rebuilt"

    again = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["start"] == "restored" and json.loads(again.stdout)["snapshot"] == snapshot


# -- inputs that changed ---------------------------------------------------------------------------


async def test_a_renamed_notebook_folder_is_rebuilt_once_then_restored(
    open_kernel: Any, jp_root_dir: Path, store_root: Path
) -> None:
    """The snapshot's working folder is gone: stale before any restore, one automatic rebuild, then restored."""
    first = jp_root_dir / "project"
    first.mkdir()
    write_notebook(first / "moved.ipynb", ["value = 21"], marked=0, after=["print(value * 2)"])
    old = build(first / "moved.ipynb", store_root)
    notebook = first.rename(jp_root_dir / "project-renamed") / "moved.ipynb"

    cold = await open_kernel(notebook)
    assert not cold.restored
    assert start_reason(cold) == f"stale: the folder it ran in ({first}) moved or was removed since the snapshot"
    [rebuilt] = await builds_of(notebook)
    assert rebuilt.state == "ready", rebuilt.error

    restored = await open_kernel(notebook)
    assert restored.restored and await restored.value("value * 2") == 42
    assert snapshot_states(store_root) == [(rebuilt.snapshot.id, "ready", [])], f"{old} is replaced"
    assert len(await builds_of(notebook)) == 1, "rebuilt once"


def write_library(folder: Path, value: int) -> Path:
    """Compile libanswer.so, whose answer() returns `value`, into the file already there (same inode)."""
    source = folder / "answer.c"
    source.write_text(LIBRARY_SOURCE.format(value=value) + "int padding(void) { return 0; }\n" * (value % 3))
    compiled = folder / "compiled.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(compiled), str(source)], check=True)
    library = folder / "libanswer.so"
    with open(library, "ab") as target:  # rewritten in place, as a careless install does
        target.truncate(0)
        target.write(compiled.read_bytes())
    compiled.unlink()
    return library


@pytest.mark.parametrize("recorded", [True, False], ids=["checked-before-restore", "manifest-without-held-files"])
async def test_a_shared_library_replaced_in_place_makes_the_snapshot_stale_not_unusable(
    open_kernel: Any, jp_root_dir: Path, store_root: Path, recorded: bool
) -> None:
    """A library the setup loaded is rewritten: the snapshot is stale (caught before the restore, or by CRIU's
    size check for a manifest that does not list held files), rebuilt once, then restored with the new code."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler to build a shared library")
    folder = jp_root_dir / "native"
    folder.mkdir()
    write_library(folder, 42)
    notebook = write_notebook(folder / "native.ipynb", LIBRARY_SETUP, marked=0, after=["print(answer())"])
    old = build(notebook, store_root)
    if not recorded:  # as a snapshot made before held files were recorded
        manifest_path = store_root / "snapshots" / old / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        del manifest["held_files"]
        manifest_path.write_text(json.dumps(manifest))
    library = write_library(folder, 43)

    cold = await open_kernel(notebook)
    assert not cold.restored
    if recorded:
        assert start_reason(cold) == f"stale: {library} changed since the snapshot"
    else:
        assert start_reason(cold).startswith(
            f"restore of snapshot {old} failed ({library} changed since the snapshot (its size differs); "
            "the snapshot is stale and is rebuilt)"
        ), start_reason(cold)
    [rebuilt] = await builds_of(notebook)
    assert rebuilt.state == "ready", rebuilt.error

    restored = await open_kernel(notebook)
    assert restored.restored and await restored.value("answer()") == 43
    assert snapshot_states(store_root) == [(rebuilt.snapshot.id, "ready", [])], f"{old} is replaced, never unusable"
