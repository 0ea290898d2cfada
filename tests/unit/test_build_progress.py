"""What a build's progress events say to whoever watches the build."""

from __future__ import annotations

import pytest

from jupyter_snapkernel.notebook.builder import (
    CHECKPOINTING,
    WAITING,
    BuildNote,
    BuildProgress,
    StagesTimed,
    progress_line,
)
from snapkernel_engine.messages import CellDone, CellStarted, Ready, Resumed, ResumeFailed, SetupFailed


def test_a_cell_event_counts_cells_from_one() -> None:
    """The first setup cell (index 0) is cell 1 of the section."""
    assert progress_line(CellStarted(0), 3) == "running setup cell 1/3"
    assert progress_line(CellStarted(2), 3) == "running setup cell 3/3"


def test_checkpoint_and_waiting_events_have_fixed_lines() -> None:
    """The checkpoint and a wait for another build are each announced."""
    assert progress_line(CHECKPOINTING, 1) == "checkpointing the kernel"
    assert progress_line(WAITING, 1) == "waiting for the build already running (another server or terminal)"


def test_a_note_is_passed_on_as_its_text() -> None:
    """A note's text is the line."""
    assert progress_line(BuildNote("GPU state is kept"), 1) == "GPU state is kept"


@pytest.mark.parametrize(
    "event", [Ready(1), Resumed(1), ResumeFailed("boom"), CellDone(0, 0.1), SetupFailed(0, "boom")]
)
def test_other_events_say_nothing(event: BuildProgress) -> None:
    """Events that are not progress give no line."""
    assert progress_line(event, 1) is None


def test_stages_are_shown_in_order_only_when_verbose() -> None:
    """A snapshot's stages make one line, in the order they ran, stages under 5 ms left out; the checkpoint's
    total leaves out the setup cells and the removal of older snapshots."""
    timed = StagesTimed({"replace": 0.2, "setup": 2.5, "criu_dump": 0.4, "hash": 0.004, "prepare": 0.05})
    assert progress_line(timed, 1) is None
    assert progress_line(timed, 1, verbose=True) == (
        "  where the time went: setup cells 2.50 s · checks 0.05 s · CRIU dump 0.40 s · old removed 0.20 s "
        "(checkpoint 0.45 s)"
    )
