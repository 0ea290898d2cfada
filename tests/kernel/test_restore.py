"""Notebook kernels restored from snapshots through jupyter_server, with real CRIU."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel import env_names
from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.notebook.setup_section import read_setup_section
from snapkernel_engine import SnapshotStore, process
from tests.helpers import (
    AFTER_SETUP,
    SETUP_CELLS,
    KernelSession,
    network_namespace,
    open_after_corrupting_its_snapshot,
    write_notebook,
)


async def test_session_gets_a_restored_kernel_with_the_setup_state(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    manifest = build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    facts = await session.value(
        "{'mode': get_ipython().kernel.start_info.mode, 'snapshot': get_ipython().kernel.start_info.snapshot,"
        " 'value': setup_value, 'sum': float(matrix.sum()), 'ticker': ticker.is_alive(),"
        " 'helper': helper.poll() is None, 'pid': os.getpid(), 'proc_self': int(os.readlink('/proc/self')),"
        " 'cwd': os.getcwd(), 'session': os.environ.get('JPY_SESSION_NAME')}"
    )
    assert facts["mode"] == "restored"
    assert facts["snapshot"] == manifest.id
    assert facts["value"] == 42
    assert facts["sum"] == float(sum(range(1_000_000)))
    assert facts["ticker"] is True
    assert facts["helper"] is True
    assert facts["pid"] == facts["proc_self"]
    assert facts["cwd"] == str(notebook.parent)
    assert facts["session"] == str(notebook)
    ticks = await session.value("ticks[0]")
    assert await session.value("(time.sleep(0.2), ticks[0])[1]") > ticks, "the setup's thread runs"
    shell = await session.execute("!echo from-a-shell-command")
    assert "from-a-shell-command" in shell.stdout
    status = await session.execute("%snapshot status")
    assert f"restored from snapshot {manifest.id}" in status.stdout
    assert "notebook snapshot: ready" in status.stdout


async def test_two_restored_kernels_are_independent(
    open_kernel: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    build_snapshot(notebook, kernel_store)
    first, second = await asyncio.gather(open_kernel(notebook), open_kernel(notebook))
    assert first.restored and second.restored
    assert first.manager.provisioner.pid != second.manager.provisioner.pid
    await first.execute("setup_value = -1; matrix[0, 0] = 99")
    assert await second.value("[setup_value, float(matrix[0, 0])]") == [42, 0.0]
    draw = "[random.random(), float(np.random.rand()), __import__('tempfile').mktemp()]"
    assert await first.value(draw) != await second.value(draw)
    # Each gets its own launch's environment, not the build's.
    tokens = {await first.value("os.environ.get('LAUNCH_TOKEN')"), await second.value("os.environ.get('LAUNCH_TOKEN')")}
    assert tokens == {"token-0", "token-1"}


async def test_a_cpu_snapshot_restores_over_tcp_in_the_host_network_by_default(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    """restore_network "auto": a CPU kernel keeps the host's network (it may need to download, call APIs…)."""
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    assert session.manager.transport == "tcp"
    assert network_namespace(session.manager.provisioner.pid) == network_namespace(os.getpid())


async def test_edited_setup_cell_starts_cold_with_stale_reason(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    build_snapshot(notebook, kernel_store)
    write_notebook(notebook, [SETUP_CELLS[0], SETUP_CELLS[1].replace("42", "43")], marked=1, after=[AFTER_SETUP])
    session: KernelSession = await open_session(notebook)
    assert not session.restored
    first = await session.execute("1 + 1")
    assert [o["msg_type"] for o in first.outputs] == ["execute_result"], "no note of the kernel's own in the cell"
    info = await session.client.kernel_info(reply=True, timeout=60)
    assert "\nsnapkernel: cold start (stale" in info["content"]["banner"]
    assert (await session.value("get_ipython().kernel.start_info.reason")).startswith("stale")
    for source in [SETUP_CELLS[0], SETUP_CELLS[1].replace("42", "43")]:
        assert (await session.execute(source)).status == "ok"
    assert await session.value("setup_value") == 43


async def test_corrupted_snapshot_starts_cold_with_the_verification_error(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    session = await open_after_corrupting_its_snapshot(open_session, notebook, kernel_store)
    for source in SETUP_CELLS:
        assert (await session.execute(source)).status == "ok"


async def test_interrupt_restart_and_shutdown_of_a_restored_kernel(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore, jp_fetch: Any, jp_serverapp: Any
) -> None:
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    message_id = await session.start_sleeping_cell()
    await jp_fetch("api", "kernels", session.kernel_id, "interrupt", method="POST", body="")
    while True:
        reply = await session.client.get_shell_msg(timeout=20)
        if reply["parent_header"].get("msg_id") == message_id:
            break
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    assert await session.value("setup_value") == 42, "the kernel lives on after the interrupt"

    first_pid = session.manager.provisioner.pid
    await jp_fetch("api", "kernels", session.kernel_id, "restart", method="POST", body="")
    await session.client.wait_for_ready(timeout=30)
    assert session.restored, "a restart restores again"
    assert session.manager.provisioner.pid != first_pid
    assert await session.value("setup_value") == 42

    tree = session.manager.provisioner.process.tree
    members = [tree.init_pid, *tree.members()]
    assert len(members) >= 3, "init, the kernel and its helper child"
    await jp_fetch("api", "kernels", session.kernel_id, method="DELETE")
    assert not any(process.is_alive(pid) or Path(f"/proc/{pid}").exists() for pid in members)
    assert tree.poll() is not None, "the namespace's launcher was reaped: no zombie"
    assert not Path(f"/proc/{tree._launcher.pid}").exists()


async def test_run_all_replays_setup_outputs_then_runs_the_rest(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    first = await session.execute(SETUP_CELLS[0])
    assert first.reply["content"]["snapkernel"]["replayed"] is True
    assert "setup total 499999500000.0" in first.stdout
    assert "from-a-setup-shell-command" in first.stdout
    second = await session.execute(SETUP_CELLS[1])
    assert second.reply["content"]["execution_count"] == 2
    results = [o for o in second.outputs if o["msg_type"] == "execute_result"]
    assert results[0]["content"]["data"]["text/plain"] == "84"
    assert results[0]["content"]["metadata"]["snapkernel"]["replayed"] is True
    assert await session.value("len(threading.enumerate()) >= 2")
    rest = await session.execute(AFTER_SETUP)
    assert "snapkernel" not in rest.reply["content"]
    assert rest.stdout.strip() == "after setup 43"


async def test_a_changed_cell_ends_the_replay(open_session: Any, notebook: Path, kernel_store: SnapshotStore) -> None:
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    changed = await session.execute("print('something else')")
    assert "snapkernel" not in changed.reply["content"]
    again = await session.execute(SETUP_CELLS[0])
    assert "snapkernel" not in again.reply["content"], "after a differing cell, setup cells run for real"


def test_failing_setup_cell_fails_the_build_and_publishes_nothing(tmp_path: Path, kernel_store: SnapshotStore) -> None:
    import pytest

    from jupyter_snapkernel.notebook.builder import BuildError

    broken = write_notebook(tmp_path / "broken.ipynb", ["x = 1", "raise ValueError('no data here')"], marked=1)
    with pytest.raises(BuildError, match=r"setup cell 2 of broken\.ipynb failed") as caught:
        build_snapshot(broken, kernel_store)
    assert "ValueError: no data here" in str(caught.value)
    assert kernel_store.list() == []
    assert list(kernel_store.staging_dir.iterdir()) == []


async def test_hooks_and_cell_magic_marker(open_session: Any, jp_root_dir: Path, kernel_store: SnapshotStore) -> None:
    cells = [
        "from jupyter_snapkernel import before_snapshot, after_restore\nevents = []\n"
        "@before_snapshot\ndef note_snapshot():\n    events.append('before')\n"
        "@after_restore\ndef note_restore():\n    events.append('after')",
        "%%snapshot\nmarker = 'set'",
    ]
    hooked = write_notebook(jp_root_dir / "hooked.ipynb", cells, marked=-1)
    build_snapshot(hooked, kernel_store)
    session: KernelSession = await open_session(hooked)
    assert session.restored
    assert await session.value("[events, marker]") == [["before", "after"], "set"]


async def test_failing_after_restore_hook_is_reported(
    open_session: Any, jp_root_dir: Path, kernel_store: SnapshotStore
) -> None:
    cells = [
        "from jupyter_snapkernel import after_restore\n"
        "@after_restore\ndef broken():\n    raise RuntimeError('hook exploded')\nready = True",
    ]
    hooked = write_notebook(jp_root_dir / "broken_hook.ipynb", cells, marked=0)
    build_snapshot(hooked, kernel_store)
    session: KernelSession = await open_session(hooked)
    assert session.restored
    first = await session.execute("ready")
    notes = "".join(o["content"]["text"] for o in first.outputs if o["msg_type"] == "stream")
    assert "after_restore hooks failed" in notes
    assert "RuntimeError: hook exploded" in notes
    assert first.status == "ok"


async def test_cold_kernel_builds_in_the_background_then_the_next_one_restores(
    open_session: Any, open_kernel: Any, notebook: Path, kernel_store: SnapshotStore, jp_serverapp: Any
) -> None:
    jp_serverapp.config.SnapKernelSettings.auto_build = True
    first: KernelSession = await open_session(notebook)
    assert not first.restored
    assert (await first.value("get_ipython().kernel.start_info.reason")) == "no snapshot yet"
    for _ in range(600):
        if kernel_store.newest_usable(read_setup_section(notebook).setup_hash):
            break
        await asyncio.sleep(0.1)
    manifest = kernel_store.newest_usable(read_setup_section(notebook).setup_hash)
    assert manifest is not None, "the background build published a snapshot"
    second: KernelSession = await open_kernel(notebook)
    assert second.restored


async def test_restart_takes_the_kernel_restored_ahead_of_time(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore, jp_serverapp: Any, jp_fetch: Any
) -> None:
    from jupyter_snapkernel.launch.spares import spare_pool

    jp_serverapp.config.SnapKernelSettings.spare_kernels = True
    build_snapshot(notebook, kernel_store)
    try:
        session: KernelSession = await open_session(notebook)
        assert session.restored
        assert await session.value("get_ipython().kernel.start_info.from_spare") is False
        first_draw = await session.value("random.random()")
        for _ in range(300):
            if not spare_pool.filling:
                break
            await asyncio.sleep(0.1)
        await jp_fetch("api", "kernels", session.kernel_id, "restart", method="POST", body="")
        await session.client.wait_for_ready(timeout=30)
        assert session.restored
        assert await session.value("get_ipython().kernel.start_info.from_spare") is True
        assert await session.value("[setup_value, ticker.is_alive(), helper.poll() is None]") == [42, True, True]
        assert await session.value("os.environ['JPY_SESSION_NAME']") == str(notebook)
        assert await session.value("random.random()") != first_draw
    finally:
        spare_pool.discard_all()


async def test_restored_kernel_behaves_as_a_normal_kernel(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    build_snapshot(notebook, kernel_store)
    session: KernelSession = await open_session(notebook)
    assert session.restored
    assert await session.value("sockets_at_build") == [], "no socket existed when the kernel was checkpointed"

    def answer(message: dict[str, Any]) -> None:
        session.client.input("typed by a person")

    reply = await session.client.execute_interactive(
        "name = input('who? ')", allow_stdin=True, stdin_hook=answer, timeout=30, output_hook=lambda m: None
    )
    assert reply["content"]["status"] == "ok"
    assert await session.value("name") == "typed by a person"

    session.client.comm_info()
    comm_reply = await session.client.get_shell_msg(timeout=10)
    assert comm_reply["msg_type"] == "comm_info_reply"
    assert comm_reply["content"]["status"] == "ok"

    output = await session.value("subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout")
    assert output == "child\n"
    # ipykernel's parent poller ends a kernel whose parent is not its launcher, as a restored kernel's is: its
    # verdict now, asked of the kernel itself (the poller looks once a second, for as long as the kernel runs).
    poller = await session.value(
        "(lambda p: p and [type(p).__name__, p.parent_pid, os.getppid()])(get_ipython().kernel.parent.poller)"
    )
    if poller:
        _, parent_pid, ppid = poller
        assert (ppid != 1) if parent_pid == 0 else (ppid == parent_pid), f"the parent poller would end it: {poller}"
    assert session.manager.provisioner.process.poll() is None


async def test_snapshot_magics_build_list_and_remove(
    open_session: Any, notebook: Path, kernel_store: SnapshotStore
) -> None:
    session: KernelSession = await open_session(notebook)
    assert not session.restored
    status = await session.execute("%snapshot status")
    assert "kernel: cold start (no snapshot yet)" in status.stdout
    assert "notebook snapshot: none" in status.stdout
    built = await session.execute("%snapshot build", timeout=300)
    assert "running setup cell 1" in built.stdout
    manifest = kernel_store.newest_usable(read_setup_section(notebook).setup_hash)
    assert manifest is not None
    assert f"snapshot {manifest.id} ready" in built.stdout
    assert "notebook snapshot: ready" in (await session.execute("%snapshot status")).stdout
    assert manifest.id in (await session.execute("%snapshot list")).stdout
    assert f"deleted {manifest.id}" in (await session.execute(f"%snapshot rm {manifest.id}")).stdout
    assert kernel_store.list() == []


@pytest.mark.parametrize("value", ["on", "1", "True"])
async def test_snapkernel_cold_set_on_starts_a_cold_kernel_despite_a_snapshot(
    jp_serverapp: Any, jp_root_dir: Path, snapkernel_spec: Path, connect: Any, notebook: Path,
    kernel_store: SnapshotStore, value: str,
) -> None:  # fmt: skip
    """SNAPKERNEL_COLD takes every on word config.env_flag takes: the launch starts cold and says why."""
    build_snapshot(notebook, kernel_store)
    kernel_id = await jp_serverapp.kernel_manager.start_kernel(
        kernel_name="snapkernel",
        path=str(notebook.parent.relative_to(jp_root_dir)),
        env={**os.environ, "JPY_SESSION_NAME": str(notebook), env_names.COLD: value},
    )
    session: KernelSession = await connect(kernel_id)
    assert not session.restored
    assert session.manager.provisioner.start_report["reason"] == "cold start requested"
    assert await session.value("get_ipython().kernel.start_info.reason") == "cold start requested"


async def test_a_port_another_process_took_before_the_kernel_listens_is_replaced_and_the_kernel_restores(
    open_kernel: Any, notebook: Path, kernel_store: SnapshotStore, jp_serverapp: Any
) -> None:
    """jupyter_client chooses ports before the kernel binds them, and another process can take one meanwhile:
    the kernel is restored again on new ports, not started cold."""
    build_snapshot(notebook, kernel_store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        jp_serverapp.config.KernelManager.cache_ports = False
        jp_serverapp.config.KernelManager.shell_port = port
        session: KernelSession = await open_kernel(notebook)
        assert session.restored
        connection = json.loads(Path(session.manager.connection_file).read_text())
        assert session.manager.shell_port == connection["shell_port"] != port
        assert await session.value("setup_value") == 42


async def test_a_start_from_a_restore_point_builds_the_rest_from_that_point_then_the_next_start_restores_whole(
    open_session: Any,
    open_kernel: Any,
    jp_root_dir: Path,
    kernel_store: SnapshotStore,
    jp_serverapp: Any,
    jp_fetch: Any,
) -> None:
    jp_serverapp.config.SnapKernelSettings.auto_build = True
    cells = [
        "import time\ntime.sleep(1.1)\nloaded = 41",
        "time.sleep(1.1)\nfeatures = loaded + 1",
        "head = features * 2",
    ]
    book = write_notebook(jp_root_dir / "points.ipynb", cells, marked=2, after=["print(head)"])
    build_snapshot(book, kernel_store)
    write_notebook(book, [*cells[:2], "head = features * 3"], marked=2, after=["print(head)"])
    first: KernelSession = await open_session(book)
    assert first.restored
    report = first.manager.provisioner.start_report
    assert (report["restored_cells"], report["setup_cells"]) == (2, 3), report
    assert await first.value("[loaded, features, 'head' in globals()]") == [41, 42, False]
    section = read_setup_section(book)
    for _ in range(600):
        if kernel_store.newest_usable(section.setup_hash):
            break
        await asyncio.sleep(0.1)
    rebuilt = kernel_store.newest_usable(section.setup_hash)
    assert rebuilt is not None, "the background build published the rest"
    assert rebuilt.parent is not None and kernel_store.get(rebuilt.parent).labels["cells"] == "2"
    second: KernelSession = await open_kernel(book)
    assert second.restored
    assert await second.value("head") == 126
