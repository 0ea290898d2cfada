"""What the REST API answers, one TypedDict per answer: labextension/src/api.ts declares the same shapes
(tests/unit/test_api_shapes.py checks that both name the same fields)."""

from __future__ import annotations

from typing import Literal, TypedDict

from snapkernel_engine import Manifest
from snapkernel_engine.messages import Resumed

StartKind = Literal["restored", "cold"]


class RestorePointMarker(TypedDict):
    """Where a restore point of a notebook is, and whether a start could restore it (IRestorePoint)."""

    cell: int  # the notebook's cell it follows (index among all cells)
    cells: int  # how many setup cells it covers
    state: Literal["current", "stale"]


class NotebookStatus(TypedDict):
    """GET or POST status: a notebook's snapshot state (INotebookStatus)."""

    path: str
    state: str  # none | queued | building | ready | partial | stale | failed
    setup_hash: str | None
    snapshot: str | None
    size_bytes: int | None
    age_s: float | None
    reasons: list[str]
    reason: str | None
    build: str | None
    queue_ahead: int | None
    setup_cells: list[int]
    setup_end: int | None
    source: Literal["own", "shared"] | None
    restored_cells: int | None  # a start restores a restore point after this many setup cells (None: all, or none)
    points: list[RestorePointMarker]


class BuildAnswer(TypedDict):
    """GET builds/ID, POST builds: a build's progress (IBuild)."""

    id: str
    path: str | None  # the notebook's API path (None outside the server's root)
    setup_hash: str
    state: str  # queued | building | ready | failed
    queue_ahead: int | None
    cells: int
    current_cell: int | None
    elapsed_s: float
    log: list[str]
    snapshot: str | None
    error: str | None


class KernelStart(TypedDict):
    """GET kernels/ID, and what headless runs read: how a kernel started (IKernelStart)."""

    start: StartKind
    snapshot: str | None
    reason: str | None
    restore_s: float | None
    setup_s: float | None
    saved_s: float | None  # the one figure of the savings, measured by the restored kernel (kernel.setup_saved_s)
    started: float
    restored_cells: int | None  # restored from a restore point after this many setup cells (None: all, or cold)
    setup_cells: int | None  # how many setup cells the notebook has (None: cold)
    fetched: str | None  # what a trusted registry gave this start (launch/registry_fetch.py; None: not asked)


class CheckDifference(TypedDict):
    """One differing cell of a check (ICheckDifference)."""

    cell: int
    source: str
    cold: str
    restored: str
    hint: str | None


class CheckAnswer(TypedDict):
    """POST checks, GET checks/ID: a check of restored runs against cold runs (ICheck)."""

    id: str
    path: str
    state: str  # running | equal | different | cold_differs | error
    runs: int
    differences: list[CheckDifference]
    error: str | None
    built: bool
    elapsed_s: float


class ServerInfo(TypedDict):
    """GET info: the extension's version and the kernelspecs it starts (IServerInfo)."""

    version: str
    kernels: list[str]


def kernel_start(
    started: float,
    snapshot: Manifest | None = None,
    resumed: Resumed | None = None,
    reason: str | None = None,
    cells: tuple[int | None, int] | None = None,
    fetched: str | None = None,
) -> KernelStart:
    """The start report of a kernel launched at `started` (time.time()): restored from `snapshot`, with the
    figures its `resumed` event measured, else cold. `cells` are the setup cells the snapshot covers (None:
    all) and those the notebook has."""
    return KernelStart(
        start="cold" if snapshot is None else "restored",
        snapshot=None if snapshot is None else snapshot.id,
        reason=reason,
        restore_s=None if resumed is None else resumed.restore_s,
        setup_s=None if resumed is None else resumed.setup_s,
        saved_s=None if resumed is None else resumed.saved_s,
        started=started,
        restored_cells=None if cells is None else cells[0],
        setup_cells=None if cells is None else cells[1],
        fetched=fetched,
    )
