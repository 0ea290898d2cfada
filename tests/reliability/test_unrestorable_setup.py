"""A setup that leaves what no restore can bring back as it was (a socket with an address, a 'spawn' or
'forkserver' pool) fails to build with one clear line that says what to do; one that ends its own
process names the setup cell."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel.notebook.builder import BuildError, build_snapshot
from snapkernel_engine import SnapshotError, SnapshotStore
from tests.helpers import KernelSession, write_notebook
from tests.servers import free_port

WHAT_TO_DO = "Close it before the snapshot (in a before_snapshot hook) and open it again in an after_restore hook"
POOL_FIX = "Use multiprocessing.get_context('fork') in the setup cells, or create the pool after them"


def refused_build(folder: Path, store: SnapshotStore, setup: str) -> str:
    """Build a notebook whose one setup cell is `setup`; return the first line of the error that refused it."""
    notebook = write_notebook(folder / "refused.ipynb", ["import socket, tempfile, os", setup], marked=1)
    with pytest.raises(SnapshotError) as caught:
        build_snapshot(notebook, store)
    assert store.list() == [], "nothing is published"
    assert list(store.staging_dir.iterdir()) == []
    return str(caught.value).splitlines()[0]


@pytest.mark.parametrize(
    ("setup", "shown"),
    [
        ("server = socket.create_server(('127.0.0.1', {port}))", "listens on TCP 127.0.0.1:{port}"),
        (
            "udp = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\nudp.bind(('::1', {port}))",
            "is bound to UDP [::1]:{port}",
        ),
        (
            "unix = socket.socket(socket.AF_UNIX)\nunix.bind('{folder}/app.sock')\nunix.listen()",
            "listens on unix socket {folder}/app.sock",
        ),
        (
            "unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\nunix.bind('\\0snapkernel-{port}')",
            "is bound to unix socket @snapkernel-{port}",
        ),
    ],
    ids=["tcp-listening", "udp-bound", "unix-path-listening", "unix-abstract-bound"],
)
def test_a_setup_holding_an_address_fails_to_build_with_the_address_and_what_to_do(
    tmp_path: Path, kernel_store: SnapshotStore, setup: str, shown: str
) -> None:
    port = free_port()
    line = refused_build(tmp_path, kernel_store, setup.format(port=port, folder=tmp_path))
    assert (
        f"{shown.format(port=port, folder=tmp_path)}: every restored kernel would try to take that address over" in line
    )
    assert line.endswith(f"{WHAT_TO_DO}, or open it after the setup cells"), line


def test_a_setup_connected_to_another_process_fails_to_build_with_its_address(
    tmp_path: Path, kernel_store: SnapshotStore
) -> None:
    """The peer is this test process: outside the kernel's tree, as another host would be."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        line = refused_build(tmp_path, kernel_store, f"peer = socket.create_connection(('127.0.0.1', {port}))")
    assert f"has a TCP connection to 127.0.0.1:{port} (from 127.0.0.1:" in line, line
    assert "a restore cannot resume a connection" in line and WHAT_TO_DO in line, line


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawn_or_forkserver_pool_in_the_setup_fails_to_build_with_the_cause_and_the_fix(
    tmp_path: Path, kernel_store: SnapshotStore, method: str
) -> None:
    # Semaphores named by this test alone: tests running beside it make multiprocessing semaphores too.
    prefix = f"mp-sk{secrets.token_hex(4)}"
    setup = (
        f"import multiprocessing\nmultiprocessing.current_process()._config['semprefix'] = '/{prefix}'\n"
        f"pool = multiprocessing.get_context({method!r}).Pool(2)\nsquares = pool.map(abs, [-1])\n"
        f"import glob\nassert glob.glob('/dev/shm/sem.{prefix}-*'), 'the pool named its semaphores by the prefix'"
    )
    line = refused_build(tmp_path, kernel_store, setup)
    assert f"was started by multiprocessing's {method!r} start method" in line, line
    assert POOL_FIX in line and "link-remap" not in line, line
    assert list(Path("/dev/shm").glob(f"sem.{prefix}-*")) == [], "the refused build's semaphores are removed"


def test_a_spawn_lock_without_processes_fails_to_build_with_the_cause_and_the_fix(
    tmp_path: Path, kernel_store: SnapshotStore
) -> None:
    line = refused_build(
        tmp_path, kernel_store, "import multiprocessing\nlock = multiprocessing.get_context('spawn').Lock()"
    )
    assert "holds the multiprocessing semaphore /dev/shm/sem.mp-" in line and POOL_FIX in line, line
    assert not Path(line.split("semaphore ")[1].split()[0]).exists(), "the refused build's semaphore is removed"


def test_a_fork_pool_in_the_setup_still_builds(tmp_path: Path, kernel_store: SnapshotStore) -> None:
    setup = (
        "import multiprocessing\nwith multiprocessing.get_context('fork').Pool(2) as pool:\n"
        "    found = pool.map(abs, [-1])"
    )
    notebook = write_notebook(tmp_path / "fork.ipynb", [setup], marked=0)
    assert build_snapshot(notebook, kernel_store).id in [manifest.id for manifest in kernel_store.list()]


def test_a_setup_that_ends_its_process_names_the_setup_cell(tmp_path: Path, kernel_store: SnapshotStore) -> None:
    notebook = write_notebook(tmp_path / "exits.ipynb", ["value = 1", "import os\nos._exit(3)"], marked=1)
    with pytest.raises(BuildError) as caught:
        build_snapshot(notebook, kernel_store)
    assert str(caught.value).splitlines()[0] == (
        "the build kernel ended (exit status 3) while setup cell 2 of exits.ipynb (`import os`) ran, before the "
        "snapshot: setup cells must not end their process (os._exit, sys.exit in a thread): remove that call"
    )
    assert kernel_store.list() == []


# The advice of the refusal, followed: the port is closed before the snapshot and opened at each restore.
REOPENING_SETUP = (
    "import random, socket, threading\nfrom jupyter_snapkernel import after_restore, before_snapshot\n"
    "server = socket.create_server(('127.0.0.1', {port}))\n"
    "@before_snapshot\ndef close_server():\n    server.close()\n"
    "@after_restore\ndef reopen_server():\n    global server, token\n"
    "    token = str(random.random())\n    server = socket.create_server(('127.0.0.1', {port}))\n"
    "    def answer():\n        while True:\n            connection, _ = server.accept()\n"
    "            connection.sendall(token.encode())\n            connection.close()\n"
    "    threading.Thread(target=answer, daemon=True).start()"
)


def answer_on(port: int) -> str:
    """Connect to 127.0.0.1:`port` and return what the listener sends, waiting until one listens."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                return connection.recv(100).decode()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def test_no_restore_takes_a_port_from_another_kernel(
    open_kernel: Any, jp_root_dir: Path, kernel_store: SnapshotStore
) -> None:
    """Two kernels restored from one snapshot whose setup listens (closed and reopened by hooks): the first
    holds the port, the second's hook fails with 'Address already in use', and connections reach the first."""
    port = free_port()
    notebook = write_notebook(jp_root_dir / "listens.ipynb", [REOPENING_SETUP.format(port=port)], marked=0)
    await asyncio.to_thread(build_snapshot, notebook, kernel_store)
    first: KernelSession = await open_kernel(notebook)
    assert first.restored
    first_token = await first.value("token")
    second: KernelSession = await open_kernel(notebook)
    assert second.restored
    failures = await second.value("get_ipython().kernel.start_info.hook_failures")
    assert len(failures) == 1 and "Address already in use" in failures[0], failures
    assert await first.value("get_ipython().kernel.start_info.hook_failures") == []
    for _ in range(5):
        assert await asyncio.to_thread(answer_on, port) == first_token
