"""What `jupyter snapkernel check` compares: its documented normalisations and its hints (pure logic)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from jupyter_snapkernel.launch.check import COLD_DIFFERS_HINT, CheckResult, Difference, known_causes, normalise, shown


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("<Figure at 0x7f3a2c1b0d90>", "<Figure at 0x7f00aa11bb22>"),
        ('{"model_id": "3fa1b2"}', '{"model_id": "99cc01"}'),
        ("/tmp/ipykernel_4242/2101.py:3: UserWarning", "/tmp/ipykernel_77/99.py:3: UserWarning"),
        ("saved to /tmp/tmpk2j_x9q1", "saved to /tmp/tmp0a9b8c7d"),
        ("CPU times: user 1.2 ms, sys: 0 ns, total: 1.2 ms\nWall time: 1.5 ms", "CPU times: user 3 s\nWall time: 2 s"),
        ("100%|##| 4/4 [00:00<00:00, 1234.56it/s]", "100%|##| 4/4 [00:01<00:00, 3.10it/s]"),
        ("fitted in 0.53 s", "fitted in 12 ms"),
    ],
)
def test_what_differs_between_runs_by_nature_reads_equal(first: str, second: str) -> None:
    assert normalise(first) == normalise(second)


def test_numbers_that_are_results_still_differ() -> None:
    assert normalise("score 0.9731") != normalise("score 0.9712")
    assert normalise("[1 2 3]") != normalise("[1 2 4]")


def test_a_progress_bar_reads_as_its_last_state_and_images_by_their_bytes() -> None:
    writes = [
        nbformat.v4.new_output("stream", name="stderr", text="\r  0%|  | 0/4 [00:00<?, ?it/s]"),
        nbformat.v4.new_output("stream", name="stderr", text="\r100%|##| 4/4 [00:00<00:00, 9.0it/s]\n"),
    ]
    assert shown(writes) == ["100%|##| 4/4 [00:00<00:00, 9.0it/s]\n"]
    figure = {"text/plain": "<Figure>", "image/png": "iVBORw0KGgo="}
    other = {"text/plain": "<Figure>", "image/png": "iVBORw0KGgp="}
    as_text = [shown([nbformat.v4.new_output("display_data", data=data)])[0] for data in (figure, other)]
    assert as_text[0].startswith("<Figure>\n<image/png sha256:") and as_text[0] != as_text[1]


def hinted(setup: str, cold: str, restored: str, built_for: str | None = None) -> str | None:
    """The hint for a difference in the cell after a one-cell setup."""
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell(setup, metadata={"tags": ["snapshot"]}), nbformat.v4.new_code_cell("x")]
    return known_causes(book, Path("/work/a/nb.ipynb"), Difference(1, "x", cold, restored), built_for)


def test_a_difference_that_matches_a_known_cause_says_so() -> None:
    assert "@after_restore" in (hinted("@after_restore\ndef f(): pass", "1", "2") or "")
    assert "matplotlib backend" in (hinted("import pandas", "<image/png sha256:ab>", "") or "")
    assert "seeds a random generator" in (hinted("np.random.seed(1)", "0.1", "0.7") or "")
    assert "environment variables" in (hinted("os.environ['OMP_NUM_THREADS'] = '1'", "1", "None") or "")
    assert "another folder" in (hinted("x = 1", "a", "b", built_for="/work/b/nb.ipynb") or "")
    assert hinted("import os\nos.environ.get('A')", "a", "b", built_for="/work/a/nb.ipynb") is None


def test_exit_codes_tell_equal_different_cold_differs_and_error_apart() -> None:
    codes = {state: CheckResult("nb", state, 2).exit_code for state in ("equal", "different", "cold_differs", "error")}
    assert codes == {"equal": 0, "different": 1, "cold_differs": 3, "error": 4}
    assert COLD_DIFFERS_HINT == "cold runs differ too: not a restore difference"
