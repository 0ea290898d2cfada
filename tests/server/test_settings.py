"""Administrator settings: traits, environment fallbacks, and their effect on kernel starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_snapkernel.config import SnapKernelSettings
from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.paths import open_store
from snapkernel_engine import SnapshotStore
from tests.helpers import KernelSession, run_json, write_notebook


def test_every_setting_is_a_configurable_trait_with_help() -> None:
    traits = SnapKernelSettings.class_traits(config=True)
    expected = {
        "enabled", "store_root", "shared_roots", "quota_bytes", "max_snapshots", "auto_build",
        "allowed_kernelspecs", "verify", "build_timeout", "restore_timeout", "lazy_restore", "spare_kernels",
        "max_concurrent_builds", "max_queued_builds", "spare_memory_bytes", "spare_idle_seconds", "restore_network",
    }  # fmt: skip
    assert expected <= traits.keys()
    assert all(trait.help for trait in traits.values())


def test_environment_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SNAPKERNEL_ENABLED", "0")
    monkeypatch.setenv("SNAPKERNEL_STORE", str(tmp_path / "{username}" / "snaps"))
    monkeypatch.setenv("JUPYTERHUB_USER", "ada")
    monkeypatch.setenv("SNAPKERNEL_SHARED_ROOTS", "/srv/course-a,/srv/course-b")
    monkeypatch.setenv("SNAPKERNEL_QUOTA_BYTES", "1000")
    monkeypatch.setenv("SNAPKERNEL_VERIFY", "size")
    settings = SnapKernelSettings()
    assert settings.enabled is False
    assert settings.user_store_root == tmp_path / "ada" / "snaps"
    assert settings.shared_roots == ["/srv/course-a", "/srv/course-b"]
    assert settings.quota_bytes == 1000
    assert settings.verify == "size"


def test_config_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPKERNEL_AUTO_BUILD", "1")
    settings = SnapKernelSettings(config=Config({"SnapKernelSettings": {"auto_build": False}}))
    assert settings.auto_build is False


@pytest.fixture
def jp_server_config(store_root: Path) -> Config:
    # store_root first: it points SNAPKERNEL_STORE at the test's store before the server reads it.
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}},
            "SnapKernelSettings": {"enabled": False, "auto_build": False, "spare_kernels": False},
        }
    )


async def test_disabled_snapshots_start_cold_and_say_so(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert not session.restored
    reason = await session.value("get_ipython().kernel.start_info.reason")
    assert reason == "snapshots are disabled (SnapKernelSettings.enabled)"


def test_trim_keeps_the_most_recently_used(tmp_path: Path) -> None:
    """Over the count limit, the snapshot restored last survives although it was built first (FIFO would drop it)."""
    store = open_store(tmp_path / "store")
    notebooks = [write_notebook(tmp_path / f"nb{index}.ipynb", [f"value = {index}"], marked=0) for index in range(3)]
    ids = [build_snapshot(notebook, store).id for notebook in notebooks]
    code, summary, stderr = run_json(notebooks[0], store.root)  # a real restore: the oldest is now used last
    assert (code, summary["start"], summary["snapshot"]) == (0, "restored", ids[0]), stderr
    assert store.clean_up(max_snapshots=2) == [ids[1]], "the least recently used one goes, not the oldest"
    assert sorted(manifest.id for manifest in store.list()) == sorted([ids[0], ids[2]])


def test_missing_privileges_are_one_clear_reason(tmp_path: Path) -> None:
    """Without a usable CRIU the provisioner plans a cold start that says why, and builds nothing."""
    from snapkernel_engine.diagnostics import snapshot_blocker

    old_criu = tmp_path / "criu"
    old_criu.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    old_criu.chmod(0o755)
    reason = snapshot_blocker(str(old_criu))
    assert reason is not None
    assert reason.startswith("criu: ") and "older than 4.0" in reason
    assert "fix: run `jupyter snapkernel install-criu`" in reason
    assert snapshot_blocker() is None, "this machine can take snapshots"


@pytest.fixture
def shared_store(tmp_path: Path) -> SnapshotStore:
    return open_store(tmp_path / "shared")


async def test_a_snapshot_only_in_a_shared_root_is_ready_everywhere_and_restored(
    open_session: Any,
    notebook: Path,
    kernel_store: SnapshotStore,
    shared_store: SnapshotStore,
    jp_serverapp: Any,
    jp_fetch: Any,
    jp_root_dir: Path,
) -> None:
    """The API, `%snapshot status` and the kernel start all see the admin's snapshot, and nothing is written there."""
    import json

    jp_serverapp.config.SnapKernelSettings.enabled = True
    jp_serverapp.config.SnapKernelSettings.shared_roots = [str(shared_store.root)]
    jp_serverapp.web_app.settings["snapkernel_settings"].shared_roots = [str(shared_store.root)]
    manifest = build_snapshot(notebook, shared_store)
    for path in [shared_store.root, *shared_store.root.rglob("*")]:
        path.chmod(0o500 if path.is_dir() else 0o400)  # read-only, as an admin would leave it
    try:
        api_path = str(notebook.relative_to(jp_root_dir))
        status = json.loads((await jp_fetch("snapkernel", "api", "status", params={"path": api_path})).body)
        assert (status["state"], status["snapshot"], status["source"]) == ("ready", manifest.id, "shared"), status
        session: KernelSession = await open_session(notebook)
        assert session.restored
        assert await session.value("get_ipython().kernel.start_info.snapshot") == manifest.id
        printed = (await session.execute("%snapshot status")).stdout
        assert f"notebook snapshot: ready ({manifest.id}," in printed and "from a shared root" in printed, printed
        assert kernel_store.list() == [], "nothing was written into the user's snapshots"
    finally:
        for path in [shared_store.root, *shared_store.root.rglob("*")]:
            path.chmod(0o700 if path.is_dir() else 0o600)


async def test_quota_applies_to_builds_through_the_api(
    jp_fetch: Any, jp_root_dir: Path, kernel_store: SnapshotStore, jp_serverapp: Any
) -> None:
    import asyncio
    import json

    jp_serverapp.config.SnapKernelSettings.max_snapshots = 1
    jp_serverapp.web_app.settings["snapkernel_settings"].max_snapshots = 1
    for name in ("first", "second"):
        write_notebook(jp_root_dir / f"{name}.ipynb", [f"name = {name!r}"], marked=0)
        response = await jp_fetch(
            "snapkernel", "api", "builds", method="POST", body=json.dumps({"path": f"{name}.ipynb"})
        )
        build_id = json.loads(response.body)["id"]
        for _ in range(600):
            build = json.loads((await jp_fetch("snapkernel", "api", "builds", build_id)).body)
            if build["state"] not in ("queued", "building"):
                break
            await asyncio.sleep(0.1)
        assert build["state"] == "ready"
    assert [manifest.labels["notebook"] for manifest in kernel_store.list()] == [str(jp_root_dir / "second.ipynb")]
