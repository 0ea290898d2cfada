"""The realistic-notebook corpus (tests/notebooks/corpus/): `jupyter snapkernel check` finds every one equal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.notebooks.harness import cli

CORPUS = Path(__file__).with_name("corpus")
NOTEBOOKS = sorted(path.name for path in CORPUS.glob("*.ipynb"))

# Notebooks that hit a known class of issue 18, fixed in parallel: each xfail is strict, so the merge of its
# fix turns it into a failure until its line here is removed.
NEEDS_FIX: dict[str, str] = {}  # corpus notebooks of known open differences, each with its reason


def corpus_params() -> list[object]:
    """Every corpus notebook, those of NEEDS_FIX marked as expected to fail (strictly)."""
    return [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=NEEDS_FIX[name])) if name in NEEDS_FIX else name
        for name in NOTEBOOKS
    ]


def test_the_corpus_has_at_least_15_notebooks() -> None:
    assert len(NOTEBOOKS) >= 15, NOTEBOOKS
    assert set(NEEDS_FIX) <= set(NOTEBOOKS), "NEEDS_FIX names a notebook the corpus does not have"


@pytest.mark.parametrize("name", corpus_params())
def test_check_finds_the_corpus_notebook_restored_equal_to_cold(name: str, tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    shutil.copytree(CORPUS, folder)  # the runs write nothing into the repository
    checked = cli(tmp_path / "store", "check", "--json", name, cwd=folder)
    result = json.loads(checked.stdout.strip().splitlines()[-1]) if checked.stdout.strip() else {}
    assert result.get("built") is True, checked.stderr
    assert (checked.returncode, result.get("state")) == (0, "equal"), json.dumps(result, indent=1) + checked.stderr
