"""Kernels restored into network namespaces of their own (SnapKernelSettings.restore_network "own"), through a real
jupyter_server: each is handed an ipc connection in a private folder, several run at once, each in a network of
its own, and they answer as a cold kernel does."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from jupyter_snapkernel.launch.network import IPC_PREFIX
from jupyter_snapkernel.launch.spares import spare_pool
from jupyter_snapkernel.notebook.builder import build_snapshot
from snapkernel_engine import SnapshotStore
from tests.helpers import (
    AFTER_SETUP,
    SETUP_CELLS,
    KernelSession,
    network_namespace,
    open_after_corrupting_its_snapshot,
    wait_until_async,
)

SPARE_WAIT_S = 60.0


@pytest.fixture
def jp_server_config() -> Config:
    """A server whose restores all get a network namespace of their own, with spare kernels (its extension
    stops them with the server)."""
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}},
            "SnapKernelSettings": {"auto_build": False, "spare_kernels": True, "restore_network": "own"},
        }
    )


async def cell_outputs(session: KernelSession, cells: list[str]) -> list[str]:
    """What each cell printed and returned, run in turn."""
    printed = []
    for source in cells:
        execution = await session.execute(source)
        assert execution.status == "ok", execution.reply["content"]
        results = [o["content"]["data"]["text/plain"] for o in execution.outputs if o["msg_type"] == "execute_result"]
        printed.append(execution.stdout + "".join(results))
    return printed


def socket_folder(session: KernelSession) -> Path:
    """The folder of a kernel's ipc sockets, after checking that its connection is over ipc."""
    manager = session.manager
    assert manager.transport == "ipc"
    return Path(manager.ip).parent


async def shut_down(server: Any, session: KernelSession) -> None:
    """Close a kernel's client and shut the kernel down through the server."""
    session.close()
    await server.kernel_manager.shutdown_kernel(session.kernel_id)


async def test_two_kernels_restored_at_once_run_in_networks_of_their_own_over_ipc(
    open_kernel: Any, notebook: Path, kernel_store: SnapshotStore, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_snapshot(notebook, kernel_store)
    cells = [*SETUP_CELLS, AFTER_SETUP]
    with monkeypatch.context() as cold_start:
        cold_start.setenv("SNAPKERNEL_COLD", "1")
        cold: KernelSession = await open_kernel(notebook)
    assert not cold.restored and cold.manager.transport == "tcp", "a cold kernel keeps TCP and the host's network"
    expected = await cell_outputs(cold, cells)
    first, second = await asyncio.gather(open_kernel(notebook), open_kernel(notebook))
    assert first.restored and second.restored
    host = network_namespace(os.getpid())
    namespaces = {network_namespace(session.manager.provisioner.pid) for session in (first, second)}
    assert len(namespaces) == 2 and host not in namespaces, "each kernel in a network namespace of its own"
    for session in (first, second):
        folder = socket_folder(session)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        sockets = [folder / f"{IPC_PREFIX}-{port}" for port in session.manager.ports]
        assert all(stat.S_ISSOCK(path.stat().st_mode) for path in sockets), sorted(folder.iterdir())
        assert await session.value("[name for _, name in __import__('socket').if_nameindex()]") == ["lo"]
    assert socket_folder(first) != socket_folder(second)
    assert await asyncio.gather(cell_outputs(first, cells), cell_outputs(second, cells)) == [expected, expected]
    for session in (first, second):
        folder = socket_folder(session)
        await shut_down(jp_serverapp, session)
        assert not folder.exists(), "the kernel's socket folder goes with it"


async def evaluate_over_websocket(websocket: Any, expression: str) -> str:
    """Evaluate `expression` through a kernel's websocket, as JupyterLab's requests go; return its repr.

    The value comes back in the execute reply (shell): iopub output right after a restart may arrive before the
    server's channels have subscribed again, and a reply may overtake output anyway."""
    msg_id = uuid.uuid4().hex
    header = {"msg_id": msg_id, "username": "test", "session": "ws", "msg_type": "execute_request", "version": "5.3"}
    content = {"code": "", "silent": False, "store_history": False, "user_expressions": {"value": expression},
               "allow_stdin": False}  # fmt: skip
    request = {"header": header, "parent_header": {}, "metadata": {}, "channel": "shell", "content": content}
    await websocket.write_message(json.dumps(request))
    while True:
        message = json.loads(await asyncio.wait_for(websocket.read_message(), 60))
        if message.get("parent_header", {}).get("msg_id") == msg_id and message["msg_type"] == "execute_reply":
            assert message["content"]["status"] == "ok", message["content"]
            value = message["content"]["user_expressions"]["value"]
            assert value["status"] == "ok", value
            return str(value["data"]["text/plain"])


async def test_a_kernel_started_cold_over_tcp_keeps_tcp_and_its_websocket_when_a_restart_restores_it(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore, jp_fetch: Any, jp_ws_fetch: Any
) -> None:
    """The server's channels of an open websocket stay on the first connection's addresses: a restart that
    restores keeps TCP and the host's network rather than leave the notebook's websocket talking to no one."""
    session: KernelSession = await open_session(notebook)  # no snapshot yet: cold, over TCP
    assert not session.restored and session.manager.transport == "tcp"
    websocket = await jp_ws_fetch("api", "kernels", session.kernel_id, "channels")
    try:
        assert await evaluate_over_websocket(websocket, "get_ipython().kernel.start_info.mode") == "'cold'"
        await asyncio.to_thread(build_snapshot, notebook, kernel_store)
        await jp_fetch("api", "kernels", session.kernel_id, "restart", method="POST", body="")
        assert session.restored and session.manager.transport == "tcp"
        assert network_namespace(session.manager.provisioner.pid) == network_namespace(os.getpid())
        value = await evaluate_over_websocket(websocket, "(get_ipython().kernel.start_info.mode, setup_value)")
        assert value == "('restored', 42)"
    finally:
        websocket.close()


async def test_a_failed_restore_falls_back_to_a_cold_kernel_over_ipc(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    session = await open_after_corrupting_its_snapshot(open_session, notebook, kernel_store)
    assert socket_folder(session).is_dir(), "planned for a restore in its own network: handed ipc"
    assert (await cell_outputs(session, [*SETUP_CELLS, AFTER_SETUP]))[-1] == "after setup 43\n"


async def test_a_spare_waits_in_a_network_of_its_own_and_a_restart_restores_again_over_ipc(
    open_kernel: Any, notebook: Path, kernel_store: SnapshotStore, jp_fetch: Any, jp_serverapp: Any
) -> None:
    manifest = build_snapshot(notebook, kernel_store)
    first: KernelSession = await open_kernel(notebook)
    assert first.restored
    await wait_until_async(lambda: manifest.id in spare_pool.spares, SPARE_WAIT_S, "no spare kernel was restored")
    spare_pid = spare_pool.spares[manifest.id].kernel.tree.pid
    second: KernelSession = await open_kernel(notebook)
    assert second.manager.provisioner.pid == spare_pid
    assert await second.value("[get_ipython().kernel.start_info.from_spare, setup_value]") == [True, 42]
    networks = [network_namespace(pid) for pid in (os.getpid(), first.manager.provisioner.pid, spare_pid)]
    assert len(set(networks)) == 3, "the spare was restored into a network namespace of its own"

    folder = socket_folder(second)
    await jp_fetch("api", "kernels", second.kernel_id, "restart", method="POST", body="")
    await second.client.wait_for_ready(timeout=60)
    assert second.restored and second.manager.provisioner.pid != spare_pid
    assert socket_folder(second) == folder, "a restart keeps the kernel's connection"
    assert network_namespace(second.manager.provisioner.pid) not in networks
    assert await second.value("setup_value") == 42
    await shut_down(jp_serverapp, second)
    assert not folder.exists()
