"""Restored equals cold where the setup fixed the randomness, and where the same setup runs in another folder."""

from __future__ import annotations

from pathlib import Path

from tests.notebooks.harness import build, notebook, restored_twice_and_cold, run


def test_generators_seeded_by_the_setup_draw_what_a_cold_run_draws(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "gallery.ipynb",
        ["import random\nimport numpy as np\nnp.random.seed(19680801)\nrandom.seed(0)"],
        ["print(np.random.rand(3).round(6).tolist(), random.random())"],
    )
    first, _, cold = restored_twice_and_cold(book, tmp_path / "store")
    assert first.cells[1] == cold.cells[1], "the draws after the setup are the cold run's"


def test_generators_the_setup_did_not_seed_still_differ_between_restored_kernels(tmp_path: Path) -> None:
    # random is seeded (kept), NumPy's global generator is not (reseeded in every restored kernel).
    book = notebook(
        tmp_path / "half.ipynb",
        ["import random\nimport numpy as np\nrandom.seed(0)\nnp.random.seed()"],
        ["print(random.random())", "print(np.random.rand())"],
    )
    store = tmp_path / "store"
    built = build(book, store)
    assert built.returncode == 0, built.stdout + built.stderr
    first, second = run(book, store), run(book, store)
    cold = run(book, store, cold=True)
    assert [first.summary["start"], second.summary["start"]] == ["restored", "restored"], first.summary
    assert first.cells[1] == second.cells[1] == cold.cells[1], "the seeded generator draws the cold run's numbers"
    assert first.cells[2] != second.cells[2], f"two restored kernels drew the same unseeded numbers: {first.cells[2]}"
