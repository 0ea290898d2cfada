"""`jupyter snapkernel run`: failing cells, spare kernels, start notes and `%%snapshot` cells, with real kernels."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager

from jupyter_snapkernel import env_names
from jupyter_snapkernel.launch.headless import KERNEL_NAME, run_notebook
from jupyter_snapkernel.launch.spares import REFILL_DELAY_S, spare_pool
from tests.helpers import (
    PRINTING_SETUP,
    build,
    helper_processes,
    outputs,
    run_json,
    snapkernel,
    write_notebook,
)

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
COLD_NOTE = "snapkernel: cold start"


def stream_text(cell: dict[str, Any]) -> str:
    """Everything a cell printed, stdout and stderr."""
    return "".join(output["text"] for output in outputs(cell, "stream"))


def failure_lines(stderr: str) -> list[str]:
    """The CLI's own lines about failed cells (restored kernels' log lines share stderr)."""
    return [line for line in stderr.splitlines() if "failed" in line]


def test_failing_cell_stops_the_run_writes_the_notebook_so_far_and_exits_1(tmp_path: Path) -> None:
    """Without --allow-errors: exit 1 at the failing cell, its error in the notebook written so far."""
    store = tmp_path / "store"
    notebook = write_notebook(
        tmp_path / "fails.ipynb",
        PRINTING_SETUP,
        marked=0,
        after=["print(value * 2)", "raise ValueError('boom')", "print('x')"],
    )
    snapshot = build(notebook, store)
    output = tmp_path / "out.ipynb"
    code, summary, stderr = run_json(notebook, store, "--output", str(output))
    assert code == 1
    assert summary["start"] == "restored" and summary["snapshot"] == snapshot
    assert summary["errors"] == [{"index": 2, "execution_count": 3, "ename": "ValueError", "evalue": "boom"}]
    assert summary["executed"] == 3 and summary["cells"] == 4
    assert failure_lines(stderr) == [
        f"fails.ipynb: cell 3 (In [3]) failed: ValueError: boom; output notebook: {output}"
    ]
    executed = nbformat.read(output, as_version=4)
    assert stream_text(executed.cells[1]) == "42\n"
    [error] = outputs(executed.cells[2], "error")
    assert (error["ename"], error["evalue"]) == ("ValueError", "boom")
    assert executed.cells[2].execution_count == 3
    assert executed.cells[3].outputs == [] and executed.cells[3].execution_count is None


def test_allow_errors_runs_every_cell_reports_each_failure_and_exits_1(tmp_path: Path) -> None:
    """--allow-errors runs past failures like nbconvert's; each one is in the JSON and on one stderr line."""
    notebook = write_notebook(
        tmp_path / "errors.ipynb",
        PRINTING_SETUP,
        marked=0,
        after=["raise ValueError('first\\nsecond line')", "{}['missing']", "print('still ran')"],
    )
    output = tmp_path / "out.ipynb"
    code, summary, stderr = run_json(notebook, tmp_path / "store", "--cold", "--allow-errors", "--output", str(output))
    assert code == 1
    assert summary["errors"] == [
        {"index": 1, "execution_count": 2, "ename": "ValueError", "evalue": "first\nsecond line"},
        {"index": 2, "execution_count": 3, "ename": "KeyError", "evalue": "'missing'"},
    ]
    assert summary["executed"] == summary["cells"] == 4
    [line] = failure_lines(stderr)
    assert line == (
        "errors.ipynb: 2 cells failed: cell 2 (In [2]) ValueError: first second line; "
        f"cell 3 (In [3]) KeyError: 'missing'; output notebook: {output}"
    )
    executed = nbformat.read(output, as_version=4)
    assert [error["ename"] for cell in executed.cells for error in outputs(cell, "error")] == ["ValueError", "KeyError"]
    assert stream_text(executed.cells[3]) == "still ran\n"


def test_failure_without_output_says_so_and_the_plain_summary_still_prints(tmp_path: Path) -> None:
    """Without --json and --output: the usual summary line, then the failure line saying no notebook was kept."""
    notebook = write_notebook(tmp_path / "plain.ipynb", PRINTING_SETUP, marked=0, after=["1 / 0"])
    result = snapkernel("run", str(notebook), "--cold", store=tmp_path / "store")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("plain.ipynb: cold (cold start requested); kernel ready in ")
    assert failure_lines(result.stderr) == [
        "plain.ipynb: cell 2 (In [2]) failed: ZeroDivisionError: division by zero; "
        "no output notebook (--output OUT.ipynb)"
    ]


@pytest.mark.parametrize(
    ("source", "ename", "evalue"),
    [
        ("import os\nos._exit(3)", "DeadKernelError", "the kernel died while running the cell"),
        ("import time\ntime.sleep(120)", "CellTimeoutError", "the cell ran longer than 3 s"),
    ],
    ids=["kernel-dies", "cell-times-out"],
)
def test_cell_that_kills_the_kernel_or_outlives_the_timeout_is_a_failed_cell(
    tmp_path: Path, source: str, ename: str, evalue: str
) -> None:
    """A kernel death or a cell timeout fails the cell, with an error output that says so, and ends the run."""
    store = tmp_path / "store"
    notebook = write_notebook(tmp_path / "stops.ipynb", PRINTING_SETUP, marked=0, after=[source, "print('never')"])
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    code, summary, stderr = run_json(notebook, store, "--allow-errors", "--timeout", "3", "--output", str(output))
    assert code == 1
    assert summary["start"] == "restored"
    [failure] = summary["errors"]
    assert (failure["index"], failure["ename"], failure["evalue"]) == (1, ename, evalue)
    # A kernel that exits at once may take its execute_input message with it: then its count is unknown.
    count = failure["execution_count"]
    assert count == 2 or (count is None and ename == "DeadKernelError")
    shown = f"In [{count or ' '}]"
    assert failure_lines(stderr) == [
        f"stops.ipynb: cell 2 ({shown}) failed: {ename}: {evalue}; output notebook: {output}"
    ]
    executed = nbformat.read(output, as_version=4)
    [error] = outputs(executed.cells[1], "error")
    assert (error["ename"], error["evalue"]) == (ename, evalue)
    assert executed.cells[2].outputs == []  # nothing can run after it, --allow-errors or not


def test_cell_tagged_raises_exception_is_an_expected_error(tmp_path: Path) -> None:
    """A cell tagged raises-exception may raise (as nbclient allows): no failure, exit 0."""
    notebook = write_notebook(
        tmp_path / "expected.ipynb", PRINTING_SETUP, marked=0, after=["raise KeyError('x')", "print(1)"]
    )
    book = nbformat.read(notebook, as_version=4)
    book.cells[1].metadata["tags"] = ["raises-exception"]
    nbformat.write(book, notebook)
    code, summary, stderr = run_json(notebook, tmp_path / "store", "--cold")
    assert code == 0, stderr
    assert summary["errors"] == [] and summary["executed"] == 3


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "error: cannot read {path}: No such file or directory"), ('{"cells": 3}', "error: {path} is not a valid")],
    ids=["missing", "not-a-notebook"],
)
def test_notebook_that_cannot_be_read_is_one_error_line(tmp_path: Path, content: str | None, message: str) -> None:
    """A missing or malformed notebook: one `error:` line and exit 1, no traceback."""
    notebook = tmp_path / "broken.ipynb"
    if content is not None:
        notebook.write_text(content)
    result = snapkernel("run", str(notebook), store=tmp_path / "store")
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith(message.format(path=notebook)), result.stderr
    assert len(result.stderr.splitlines()) == 1


# -- spare kernels ---------------------------------------------------------------------------------


def test_runs_with_spare_kernels_on_end_cleanly_and_leave_no_kernel_behind(tmp_path: Path) -> None:
    """Restored runs with spare kernels on: no traceback at exit, and no restored process outlives the run."""
    store = tmp_path / "store"
    # Longer than a spare's refill delay plus a restore: a spare would be restored before the run ends.
    notebook = write_notebook(
        tmp_path / "spares.ipynb", PRINTING_SETUP, marked=0, after=[f"import time\ntime.sleep({REFILL_DELAY_S + 3})"]
    )
    build(notebook, store)
    for _ in range(2):
        result = snapkernel("run", str(notebook), "--json", store=store, env={env_names.SPARE_KERNELS: "1"})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["start"] == "restored"
        assert "Traceback" not in result.stderr and "EOFError" not in result.stderr, result.stderr
        deadline = time.monotonic() + 10
        while helper_processes(store) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert helper_processes(store) == []


async def test_a_headless_run_restores_no_spare_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A headless run is one start: even with spares on it leaves no spare restored or on its way."""
    store = tmp_path / "store"
    monkeypatch.setenv("SNAPKERNEL_STORE", str(store))
    monkeypatch.setenv(env_names.SPARE_KERNELS, "1")
    notebook = write_notebook(
        tmp_path / "spares.ipynb", PRINTING_SETUP, marked=0, after=[f"import time\ntime.sleep({REFILL_DELAY_S + 3})"]
    )
    snapshot = build(notebook, store)
    summary = await run_notebook(notebook)
    assert summary.start == "restored" and summary.snapshot == snapshot
    assert not spare_pool.filling
    assert spare_pool.take(snapshot) is None


# -- start notes ------------------------------------------------------------------------------------


def test_cold_start_note_stays_out_of_the_output_notebook_and_is_in_the_summary(tmp_path: Path) -> None:
    """A cold headless run says why in its summary; the cells hold only what they printed."""
    notebook = write_notebook(tmp_path / "cold.ipynb", PRINTING_SETUP, marked=0, after=["print(value)"])
    output = tmp_path / "out.ipynb"
    code, summary, _ = run_json(notebook, tmp_path / "store", "--cold", "--output", str(output))
    assert code == 0
    assert (summary["start"], summary["reason"]) == ("cold", "cold start requested")
    executed = nbformat.read(output, as_version=4)
    assert [stream_text(cell) for cell in executed.cells] == ["setup done\n", "21\n"]


FIRST_CELLS = ("print('hello')", "import sys; print('to stderr', file=sys.stderr)", "1 + 1")


async def outputs_and_banner(kernel_name: str, env: dict[str, str], cwd: Path) -> tuple[list[Any], str]:
    """Start a kernel as a Jupyter server would; return what FIRST_CELLS published and the kernel's banner."""
    manager = AsyncKernelManager(kernel_name=kernel_name)
    await manager.start_kernel(env=env, cwd=str(cwd))
    client = manager.client()
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=60)
        published: list[Any] = []

        def collect(message: dict[str, Any]) -> None:
            """Keep every output message, as a notebook would save it."""
            if message["msg_type"] in {"stream", "display_data", "execute_result", "error"}:
                published.append((message["msg_type"], message["content"]))

        for code in FIRST_CELLS:
            reply = await client.execute_interactive(code, timeout=60, output_hook=collect)
            assert reply["content"]["status"] == "ok", reply["content"]
        info = await client.kernel_info(reply=True, timeout=60)
        return published, info["content"]["banner"]
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)


def server_launch_env(notebook: Path, **extra: str) -> dict[str, str]:
    """The environment a Jupyter server gives a notebook's kernel: nothing says it reports starts itself."""
    env = {key: value for key, value in os.environ.items() if key != env_names.START_NOTES}
    return {**env, "JPY_SESSION_NAME": str(notebook), env_names.COLD: "1", **extra}


async def test_cold_kernel_outputs_equal_plain_ipykernels_and_its_banner_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold snapkernel kernel puts nothing of its own into cell outputs; frontends find the note in its banner."""
    monkeypatch.setenv("SNAPKERNEL_STORE", str(tmp_path / "store"))
    notebook = write_notebook(tmp_path / "cold.ipynb", PRINTING_SETUP, marked=0)
    cold, banner = await outputs_and_banner(KERNEL_NAME, server_launch_env(notebook), tmp_path)
    plain, plain_banner = await outputs_and_banner("python3", server_launch_env(notebook), tmp_path)
    assert cold == plain
    assert COLD_NOTE not in plain_banner
    assert banner.endswith(f"\n{COLD_NOTE} (cold start requested)\n"), banner  # IPython's banner ends in a random tip


async def test_kernel_asked_for_start_notes_shows_why_it_started_cold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With SNAPKERNEL_START_NOTES=1 the first cell also says on stderr why the kernel started cold."""
    monkeypatch.setenv("SNAPKERNEL_STORE", str(tmp_path / "store"))
    notebook = write_notebook(tmp_path / "cold.ipynb", PRINTING_SETUP, marked=0)
    published, _ = await outputs_and_banner(
        KERNEL_NAME, server_launch_env(notebook, **{env_names.START_NOTES: "1"}), tmp_path
    )
    assert published[0] == ("stream", {"name": "stderr", "text": f"{COLD_NOTE} (cold start requested)\n"})
    assert published[1] == ("stream", {"name": "stdout", "text": "hello\n"})


def test_failed_after_restore_hook_is_still_shown_in_a_headless_run(tmp_path: Path) -> None:
    """Failed after_restore hooks are no start note: the summary does not carry them, the first cell does."""
    store = tmp_path / "store"
    setup = [
        "from jupyter_snapkernel import after_restore\n"
        "@after_restore\ndef reconnect():\n    raise RuntimeError('database gone')\nready = True"
    ]
    notebook = write_notebook(tmp_path / "hook.ipynb", setup, marked=0, after=["print(ready)"])
    build(notebook, store)
    output = tmp_path / "out.ipynb"
    code, summary, _ = run_json(notebook, store, "--output", str(output))
    assert code == 0 and summary["start"] == "restored"
    notes = stream_text(nbformat.read(output, as_version=4).cells[0])
    assert "after_restore hooks failed" in notes and "database gone" in notes
    assert COLD_NOTE not in notes


# -- %%snapshot cells -------------------------------------------------------------------------------


@pytest.mark.parametrize("start", ["cold", "restored"])
def test_snapshot_cell_ending_in_an_expression_shows_its_result_once(tmp_path: Path, start: str) -> None:
    """A %%snapshot cell's result appears once, with the cell's own In [n], cold and restored (replayed)."""
    store = tmp_path / "store"
    notebook = tmp_path / "magic.ipynb"
    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (snapshots)", "language": "python"}
    book.cells = [
        nbformat.v4.new_code_cell("%%snapshot\nvalue = 21\nvalue * 2"),
        nbformat.v4.new_code_cell("value + 1"),
    ]
    nbformat.write(book, notebook)
    args = ["--cold"] if start == "cold" else []
    if start == "restored":
        build(notebook, store)
    output = tmp_path / "out.ipynb"
    code, summary, _ = run_json(notebook, store, *args, "--output", str(output))
    assert code == 0 and summary["start"] == start
    executed = nbformat.read(output, as_version=4)
    for cell, count, value in zip(executed.cells, [1, 2], ["42", "22"], strict=True):
        [result] = outputs(cell, "execute_result")
        assert cell.execution_count == result["execution_count"] == count
        assert result["data"]["text/plain"] == value
        assert [output["output_type"] for output in cell.outputs] == ["execute_result"]


def test_failing_snapshot_cell_fails_the_run_and_the_build(tmp_path: Path) -> None:
    """An exception in a %%snapshot cell is the cell's failure: the run exits 1 and no snapshot is built."""
    store = tmp_path / "store"
    notebook = write_notebook(tmp_path / "broken.ipynb", ["%%snapshot\nvalue = 1\nraise ValueError('setup broke')"], -1)
    output = tmp_path / "out.ipynb"
    code, summary, _ = run_json(notebook, store, "--cold", "--output", str(output))
    assert code == 1
    assert summary["errors"] == [{"index": 0, "execution_count": 1, "ename": "ValueError", "evalue": "setup broke"}]
    [error] = outputs(nbformat.read(output, as_version=4).cells[0], "error")
    # The marker line is blanked, not removed: the traceback points at the cell's own line 3.
    assert "line 3" in ANSI_ESCAPE.sub("", "\n".join(error["traceback"]))
    built = snapkernel("build", "--quiet", str(notebook), store=store)
    assert built.returncode == 1
    assert "setup broke" in built.stderr
