"""`jupyter snapkernel run` and spare kernels at their edges: failures are one line, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import psutil
import pytest

from jupyter_snapkernel import env_names
from jupyter_snapkernel.kernel.process_title import SPARE_TITLE
from tests.helpers import JUPYTER, PRINTING_SETUP, build, helper_processes, outputs, snapkernel, write_notebook
from tests.reliability.test_shutdown import RESTORE_HELPER
from tests.servers import LocalServer

KERNEL_WARNING = "Kernel is running over TCP without encryption"  # ipykernel's own line at every start


@pytest.fixture
def spare_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A jupyter server with spare kernels on; killed after the test."""
    server = LocalServer(tmp_path, {env_names.SPARE_KERNELS: "1"})
    yield server
    server.kill()


def cli_lines(stderr: str) -> list[str]:
    """What the CLI printed on stderr, without the kernels' start warnings."""
    return [line for line in stderr.splitlines() if line.strip() and KERNEL_WARNING not in line]


def assert_one_failure_line(stderr: str, expected: str) -> None:
    """stderr holds no traceback and exactly one line of the CLI's: `expected`."""
    assert "Traceback" not in stderr and "EOFError" not in stderr, stderr
    assert cli_lines(stderr) == [expected]


def test_failing_cell_writes_the_notebook_with_its_error_and_prints_one_line(tmp_path: Path) -> None:
    """A cell that raises in a restored run: exit 1, one stderr line, the output notebook holds the error."""
    store = tmp_path / "store"
    notebook = write_notebook(tmp_path / "fails.ipynb", PRINTING_SETUP, marked=0, after=["1 / 0", "print('never')"])
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    result = snapkernel("run", str(notebook), "--output", str(output), store=store)
    assert result.returncode == 1
    assert result.stdout.startswith("fails.ipynb: restored from "), result.stdout
    assert_one_failure_line(
        result.stderr,
        f"fails.ipynb: cell 2 (In [2]) failed: ZeroDivisionError: division by zero; output notebook: {output}",
    )
    executed = nbformat.read(output, as_version=4)
    [error] = outputs(executed.cells[1], "error")
    assert (error["ename"], error["evalue"]) == ("ZeroDivisionError", "division by zero")
    assert executed.cells[2].outputs == []


def test_cell_timeout_is_one_line_naming_the_cell_and_the_limit(tmp_path: Path) -> None:
    """A cell that outlives --timeout ends the run at the limit: one line naming the cell and the limit, exit 1."""
    store = tmp_path / "store"
    notebook = write_notebook(
        tmp_path / "slow.ipynb",
        PRINTING_SETUP,
        marked=0,
        after=["print(value)", "import time\ntime.sleep(120)", "print(1)"],
    )
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    started = time.monotonic()
    result = snapkernel("run", str(notebook), "--timeout", "2", "--output", str(output), store=store)
    assert time.monotonic() - started < 60  # the limit, not the cell's two minutes
    assert result.returncode == 1
    assert_one_failure_line(
        result.stderr,
        "slow.ipynb: cell 3 (In [3]) failed: CellTimeoutError: the cell ran longer than 2 s; "
        f"output notebook: {output}",
    )
    executed = nbformat.read(output, as_version=4)
    [error] = outputs(executed.cells[2], "error")
    assert (error["ename"], error["evalue"]) == ("CellTimeoutError", "the cell ran longer than 2 s")
    assert executed.cells[3].outputs == []


def test_restored_tree_killed_mid_run_is_one_line_and_the_notebook_is_written(tmp_path: Path) -> None:
    """SIGKILL to the restored kernel's namespace while a cell runs: one DeadKernelError line, no traceback."""
    store = tmp_path / "store"
    started = tmp_path / "cell-started"
    cell = f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(120)"
    notebook = write_notebook(tmp_path / "killed.ipynb", PRINTING_SETUP, marked=0, after=[cell, "print('never')"])
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    command = [str(JUPYTER), "snapkernel", "--store", str(store), "run", str(notebook), "--output", str(output)]
    run = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, env_names.SPARE_KERNELS: "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()
            time.sleep(0.1)
        [init] = [
            process
            for process in psutil.Process(run.pid).children(recursive=True)
            if RESTORE_HELPER in " ".join(process.cmdline()) and process.name() != "unshare"
        ]
        init.send_signal(signal.SIGKILL)  # PID 1 of the namespace: the kernel goes with it
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 1, stdout + stderr
    assert_one_failure_line(
        stderr,
        f"killed.ipynb: cell 2 (In [2]) failed: DeadKernelError: the kernel died while running the cell; "
        f"output notebook: {output}",
    )
    [error] = outputs(nbformat.read(output, as_version=4).cells[1], "error")
    assert error["ename"] == "DeadKernelError"
    assert helper_processes(store) == []


def test_bench_with_spare_kernels_ends_without_traceback_and_leaves_no_kernel(tmp_path: Path) -> None:
    """`bench` takes spare kernels and kills the last one at exit: no EOFError, no restored process left."""
    store = tmp_path / "store"
    notebook = write_notebook(tmp_path / "bench.ipynb", PRINTING_SETUP, marked=0, after=["print(value)"])
    build(notebook, store)
    result = snapkernel(
        "bench", str(notebook), "--runs", "1", "--json", store=store, env={env_names.SPARE_KERNELS: "1"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spares"] is True
    assert "Traceback" not in result.stderr and "EOFError" not in result.stderr, result.stderr
    deadline = time.monotonic() + 10
    while helper_processes(store) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert helper_processes(store) == []


def test_killed_spare_kernel_is_replaced_without_traceback(spare_server: LocalServer) -> None:
    """A spare kernel killed while it waits: the next start restores anew, and the server logs no traceback."""
    server = spare_server
    build(write_notebook(server.root / "spare.ipynb", PRINTING_SETUP, marked=0), server.store)
    assert server.ready_kernel("spare.ipynb")["start"] == "restored"
    server.wait_until(lambda: server.processes(SPARE_TITLE), 60, "no spare kernel was restored")
    [spare] = server.processes(SPARE_TITLE)
    spare.kill()
    spare.wait(10)
    second = server.ready_kernel("spare.ipynb")
    assert second["start"] == "restored", second
    log = server.log()
    assert "Traceback" not in log and "EOFError" not in log and "control pipe closed" not in log, log[-4000:]
