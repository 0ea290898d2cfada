"""Run notebooks headless with snapkernel kernels, and time cold against restored starts."""

from __future__ import annotations

import asyncio
import copy
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nbformat
from jupyter_client.kernelspec import NoSuchKernel
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from traitlets.config import Config

from .. import env_names
from ..answers import KernelStart
from ..config import PROVISIONER_NAME
from ..notebook import setup_section
from ..notebook.parameters import inject_parameters
from ..notebook.setup_section import NotebookError, normalise, setup_section_of
from .provisioner import SnapKernelProvisioner
from .spares import spare_pool

KERNEL_NAME = "snapkernel"


@dataclass
class CellFailure:
    """A cell that failed in a headless run: where it is and what it raised."""

    index: int  # position among the notebook's cells, from 0
    execution_count: int | None
    ename: str
    evalue: str


@dataclass
class RunSummary:
    """How a headless run started, how long it took, and which cells failed."""

    start: str  # "restored" or "cold"
    snapshot: str | None
    reason: str | None
    kernel_ready_s: float
    total_s: float
    cells: int
    executed: int = 0  # code cells run: fewer than `cells` when a failure stopped the run
    errors: list[CellFailure] = field(default_factory=list)
    output: str | None = None
    restored_cells: int | None = None  # restored from a restore point after this many setup cells (None: all)
    setup_cells: int | None = None
    fetched: str | None = None  # what a trusted registry gave this start (None: not asked)

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return asdict(self)


class RunError(Exception):
    """A notebook that could not be run at all: unreadable, or its kernel did not start."""


def kernel_env(notebook: Path, cold: bool) -> dict[str, str]:
    """The environment jupyter_server would give the notebook's kernel, for a launcher that reports starts."""
    env = {**os.environ, "JPY_SESSION_NAME": str(notebook)}
    # The run's summary says how the kernel started: a note about it would only clutter the first cell.
    env[env_names.START_NOTES] = "0"
    if cold:
        env[env_names.COLD] = "1"
    return env


def describe_start(manager: AsyncKernelManager) -> KernelStart:
    """How a started kernel started, as its provisioner reported it (a cold start's reason always said)."""
    provisioner = manager.provisioner
    if not isinstance(provisioner, SnapKernelProvisioner):
        raise RuntimeError(f"the kernel was not started by {PROVISIONER_NAME}, which reports how kernels start")
    report = provisioner.start_report
    reason = None if report["start"] == "restored" else report["reason"] or "no setup section"
    return {**report, "reason": reason}


def notebook_to_run(notebook: Path) -> nbformat.NotebookNode:
    """Read a notebook to run (through the one reader that validates notebooks), or raise RunError saying why."""
    try:
        # As nbformat.read gives it: multi-line sources and outputs as strings, transient fields dropped.
        return nbformat.v4.nbjson.JSONReader().to_notebook(setup_section.read_notebook(notebook))
    except NotebookError as error:
        raise RunError(error.naming(str(notebook))) from None


def _error_output(ename: str, evalue: str) -> nbformat.NotebookNode:
    """An error output for a failure the kernel could not report itself (it died, or never answered)."""
    return nbformat.v4.new_output("error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


async def _execute(
    client: NotebookClient, cell: nbformat.NotebookNode, index: int, failures: list[CellFailure]
) -> bool:
    """Run one cell; return whether the run may go on. A failure is in `failures` and in the cell's outputs."""
    try:
        await client.async_execute_cell(cell, index)
        return True
    except CellExecutionError:
        return False  # the on_cell_error hook recorded it; the traceback is in the cell's outputs
    except CellTimeoutError:
        ename, evalue = "CellTimeoutError", f"the cell ran longer than {client.timeout:g} s"
    except DeadKernelError:
        ename, evalue = "DeadKernelError", "the kernel died while running the cell"
    # The kernel is gone or still busy with this cell: nothing more can run, and only we can say why.
    cell.outputs.append(_error_output(ename, evalue))
    failures.append(CellFailure(index, cell.get("execution_count"), ename, evalue))
    return False


def failure_recorder(failures: list[CellFailure]) -> Callable[[nbformat.NotebookNode, int, dict[str, Any]], None]:
    """An nbclient on_cell_error hook that appends each failing cell to `failures` (allowed errors too)."""

    def record_failure(cell: nbformat.NotebookNode, cell_index: int, execute_reply: dict[str, Any]) -> None:
        if "raises-exception" in cell.metadata.get("tags", []):
            return  # an error the notebook expects, as nbclient treats it
        content = execute_reply["content"]
        count = content.get("execution_count", cell.get("execution_count"))
        failures.append(CellFailure(cell_index, count, content.get("ename", ""), content.get("evalue", "")))

    return record_failure


def headless_kernel_manager(config: Config | None) -> AsyncKernelManager:
    """A kernel manager for one headless start, with `config` (left as it is) and no spare kernels.

    A headless run is a single start (`jupyter snapkernel run` exits after it): a spare kernel restored
    for a next start would only take CPU from the notebook's cells and be killed unused at exit.
    """
    settings = copy.deepcopy(config) if config is not None else Config()
    settings.merge(Config({"SnapKernelSettings": {"spare_kernels": False}}))
    return AsyncKernelManager(kernel_name=KERNEL_NAME, config=settings)


async def run_notebook(
    notebook: Path,
    *,
    cold: bool = False,
    output: Path | None = None,
    timeout: float = 600,
    allow_errors: bool = False,
    config: Config | None = None,
    parameters: dict[str, object] | None = None,
) -> RunSummary:
    """Execute a notebook top to bottom, restoring its kernel when a snapshot matches.

    A failing cell stops the run unless `allow_errors`; either way the summary lists the failures
    and `output` gets the notebook as far as it ran, failing cells' errors included. `config` is the
    settings to start the kernel with (a server's, so that it restores from that server's stores). `parameters`
    are injected as papermill injects them: the setup cells before them are restored, the rest run.
    """
    book = notebook_to_run(notebook)
    if parameters:
        inject_parameters(book, parameters)
        book = nbformat.from_dict(book)  # the injected cell as a NotebookNode, as nbclient reads cells
    failures: list[CellFailure] = []
    manager = headless_kernel_manager(config)
    client = NotebookClient(
        book,
        km=manager,
        timeout=timeout,
        allow_errors=allow_errors,
        on_cell_error=failure_recorder(failures),
        resources={"metadata": {"path": str(notebook.parent)}},
    )
    started = time.perf_counter()
    ready: float | None = None
    try:
        async with client.async_setup_kernel(env=kernel_env(notebook, cold)):
            ready = time.perf_counter() - started
            report = describe_start(manager)
            for index, cell in enumerate(book.cells):
                if not await _execute(client, cell, index, failures):
                    break
        total = time.perf_counter() - started
    except (RuntimeError, NoSuchKernel) as error:
        if ready is not None:
            raise
        raise RunError(f"the kernel of {notebook.name} did not start: {error}") from None
    finally:
        # nbclient leaves a kernel manager it did not create running.
        if manager.has_kernel:
            await manager.shutdown_kernel(now=True)
        # Written even when a cell failed or the run broke off: the notebook shows how far it got.
        if output is not None and ready is not None:
            nbformat.write(book, output)
    code_cells = sum(cell.cell_type == "code" for cell in book.cells)
    return RunSummary(
        report["start"],
        report["snapshot"],
        report["reason"],
        round(ready, 3),
        round(total, 3),
        code_cells,
        executed=client.code_cells_executed,
        errors=failures,
        output=str(output) if output is not None else None,
        restored_cells=report["restored_cells"],
        setup_cells=report["setup_cells"],
        fetched=report["fetched"],
    )


async def time_to_first_reply(notebook: Path, cold: bool) -> tuple[float, str]:
    """Seconds from launch to the reply of the first cell after the setup section (Run All)."""
    book = notebook_to_run(notebook)
    section = setup_section_of(book)
    sources = [normalise(cell.source) for cell in book.cells if cell.cell_type == "code"]
    setup_count = len(section.cells) if section else 0
    probe = sources[setup_count] if setup_count < len(sources) else "pass"
    manager = AsyncKernelManager(kernel_name=KERNEL_NAME)
    started = time.perf_counter()
    await manager.start_kernel(env=kernel_env(notebook, cold), cwd=str(notebook.parent))
    client = manager.client()
    client.start_channels()
    try:
        # Requests queue on the shell channel until the kernel listens, so no wait_for_ready (whose
        # fixed iopub drain would add the same 0.2 s to both kinds of start).
        for source in [*sources[:setup_count], probe]:
            message_id = client.execute(source)
            while True:
                reply = await client.get_shell_msg(timeout=600)
                if reply["parent_header"].get("msg_id") == message_id:
                    break
            if reply["content"]["status"] != "ok":
                raise RuntimeError(f"cell failed while timing {notebook.name}: {reply['content'].get('evalue')}")
        elapsed = time.perf_counter() - started
        start = describe_start(manager)["start"]
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)
    return elapsed, start


async def _wait_for_spare(timeout: float = 30) -> None:
    """Let the spare that the last restore started finish, as it would between two real starts."""
    deadline = time.monotonic() + timeout
    while spare_pool.filling and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def bench_notebook(notebook: Path, runs: int, spares: bool = False) -> dict[str, Any]:
    """Median time to the first post-setup reply, cold and restored.

    Without `spares` every restored start runs CRIU while the launch waits; with them, each start
    takes the kernel restored ahead of time by the start before it (the first restores directly).
    """
    os.environ[env_names.SPARE_KERNELS] = "1" if spares else "0"
    cold = [await time_to_first_reply(notebook, cold=True) for _ in range(runs)]
    restored = []
    for _ in range(runs + (1 if spares else 0)):
        restored.append(await time_to_first_reply(notebook, cold=False))
        await _wait_for_spare()
    if spares:
        restored = restored[1:]  # the first start had no spare to take
    spare_pool.discard_all()
    not_restored = [start for _, start in restored if start != "restored"]
    if not_restored:
        raise RuntimeError(f"{len(not_restored)} of {runs} kernels did not restore: build the snapshot first")
    cold_s = statistics.median(seconds for seconds, _ in cold)
    restored_s = statistics.median(seconds for seconds, _ in restored)
    return {
        "notebook": str(notebook),
        "runs": runs,
        "spares": spares,
        "cold_s": round(cold_s, 3),
        "restored_s": round(restored_s, 3),
        "ratio": round(cold_s / restored_s, 2),
        "cold_runs_s": [round(seconds, 3) for seconds, _ in cold],
        "restored_runs_s": [round(seconds, 3) for seconds, _ in restored],
    }


def run(coroutine: Any) -> Any:
    """Run a coroutine from synchronous code."""
    return asyncio.run(coroutine)
