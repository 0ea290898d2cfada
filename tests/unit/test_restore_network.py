"""Which network a restore runs in (SnapKernelSettings.restore_network), where a kernel's ipc sockets live, and the
spares of GPU snapshots: counted by the host memory they hold."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import stat
from pathlib import Path

import pytest
from traitlets import TraitError

from jupyter_snapkernel import env_names
from jupyter_snapkernel.config import SnapKernelSettings
from jupyter_snapkernel.launch.network import (
    IPC_PREFIX,
    SOCKET_PATH_MAX,
    connection_transport,
    private_ipc_folder,
    restores_in_own_network,
)
from jupyter_snapkernel.launch.spares import SpareLimits, SparePool, spare_size
from snapkernel_engine import Manifest, SnapshotStore
from tests.unit.test_manifest import manifest

GIB = 2**30


def snapshot(gpu: bool, rss_bytes: int = GIB) -> Manifest:
    """A manifest of a GPU snapshot (its kernel held CUDA state) or of a CPU one, with `rss_bytes` of host memory."""
    return dataclasses.replace(manifest(), cuda_pids=[1234] if gpu else [], rss_bytes=rss_bytes)


@pytest.mark.parametrize(
    ("setting", "gpu", "own"),
    [
        ("auto", True, True),
        ("auto", False, False),
        ("own", True, True),
        ("own", False, True),
        ("host", True, False),
        ("host", False, False),
    ],
)
def test_each_setting_decides_the_network_of_cpu_and_gpu_snapshots(setting: str, gpu: bool, own: bool) -> None:
    """auto: GPU snapshots only (CPU kernels keep the host's network); own: every restore; host: none."""
    assert restores_in_own_network(snapshot(gpu), setting) is own


@pytest.mark.parametrize("setting", ["auto", "own"])
def test_a_tcp_connection_keeps_every_restore_in_the_host_network(setting: str) -> None:
    """An editor's TCP connection file cannot reach into a network namespace: even a GPU snapshot stays out."""
    assert restores_in_own_network(snapshot(gpu=True), setting, ipc=False) is False


def test_restore_network_is_auto_by_default_and_set_by_its_variable(clean_environment: pytest.MonkeyPatch) -> None:
    assert SnapKernelSettings().restore_network == "auto"
    clean_environment.setenv(env_names.RESTORE_NETWORK, "OWN")
    assert SnapKernelSettings().restore_network == "own"
    clean_environment.setenv(env_names.RESTORE_NETWORK, "bridge")
    with pytest.raises(TraitError):
        _ = SnapKernelSettings().restore_network


def test_the_transport_is_read_from_the_connection_file(tmp_path: Path) -> None:
    ipc, tcp, unnamed = tmp_path / "ipc.json", tmp_path / "tcp.json", tmp_path / "unnamed.json"
    ipc.write_text(json.dumps({"transport": "ipc", "ip": "/run/kernel"}))
    tcp.write_text(json.dumps({"transport": "tcp", "ip": "127.0.0.1"}))
    unnamed.write_text(json.dumps({"ip": "127.0.0.1"}))
    assert connection_transport(str(ipc)) == "ipc"
    assert [connection_transport(str(path)) for path in (tcp, unnamed, tmp_path / "missing.json")] == ["tcp"] * 3


def test_each_kernel_gets_a_private_socket_folder_in_the_runtime_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "rt"))
    first, second = private_ipc_folder(), private_ipc_folder()
    assert first != second and first.parent == second.parent == tmp_path / "rt"
    assert stat.S_IMODE(first.stat().st_mode) == 0o700, "only the kernel's user may bind or connect there"


def test_a_runtime_folder_too_long_for_a_socket_path_gives_way_to_the_temporary_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(deep))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    folder = private_ipc_folder()
    assert folder.parent == tmp_path and stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert len(f"{folder / IPC_PREFIX}-65535") <= SOCKET_PATH_MAX


def spare_started(pool: SparePool, store: SnapshotStore, wanted: Manifest) -> bool:
    """Whether `pool.refill` starts restoring a spare of `wanted` (stopped again before any restore runs)."""

    async def refill() -> bool:
        pool.refill(store, wanted, None, lazy=False, timeout=1.0, own_network=bool(wanted.cuda_pids))
        started = pool.filling
        await pool.close(timeout=10)
        return started

    return asyncio.run(refill())


def test_a_gpu_snapshot_gets_a_spare_within_the_memory_budget(tmp_path: Path) -> None:
    """GPU snapshots get spares too, counted by the host memory measured at their dump (their GPU state was in
    host memory then, where a spare keeps it), within spare_memory_bytes: one that does not fit gets none."""
    store, pool = SnapshotStore(tmp_path / "store"), SparePool()
    pool.limits = SpareLimits(memory_bytes=4 * GIB)
    assert spare_size(snapshot(gpu=True, rss_bytes=3 * GIB)) == 3 * GIB
    assert spare_started(pool, store, snapshot(gpu=True, rss_bytes=3 * GIB))
    assert not spare_started(pool, store, snapshot(gpu=True, rss_bytes=5 * GIB))
    assert pool.spares == {}
