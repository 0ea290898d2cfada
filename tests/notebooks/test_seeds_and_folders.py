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


def project(folder: Path, data: str, helper: str) -> Path:
    """A notebook in `folder` whose setup reads data.txt and imports helper.py from its own folder."""
    folder.mkdir()
    (folder / "data.txt").write_text(data)
    (folder / "helper.py").write_text(f"NAME = {helper!r}\n")
    return notebook(
        folder / "analysis.ipynb",
        ["import helper\nwith open('data.txt') as handle:\n    data = handle.read()"],
        ["print(data, helper.NAME)"],
    )


def test_the_same_setup_in_another_folder_reads_that_folders_data_and_modules(tmp_path: Path) -> None:
    store = tmp_path / "store"
    book_a = project(tmp_path / "project-a", "alpha", "helper-a")
    book_b = project(tmp_path / "project-b", "beta", "helper-b")
    first_a, _, _ = restored_twice_and_cold(book_a, store)
    assert first_a.cells[1] == ["alpha helper-a\n"]

    b_before_its_build = run(book_b, store)
    assert b_before_its_build.summary["start"] == "cold", b_before_its_build.summary
    assert "data.txt differs here" in b_before_its_build.summary["reason"], b_before_its_build.summary
    assert b_before_its_build.cells[1] == ["beta helper-b\n"]

    first_b, _, _ = restored_twice_and_cold(book_b, store)
    assert first_b.cells[1] == ["beta helper-b\n"]
    a_again = run(book_a, store)  # b's snapshot did not replace a's: no rebuild ping-pong between the folders
    assert (a_again.summary["start"], a_again.cells[1]) == ("restored", ["alpha helper-a\n"]), a_again.summary
    assert a_again.summary["snapshot"] == first_a.summary["snapshot"]


def test_an_identical_copy_of_the_folder_restores_the_original_snapshot(tmp_path: Path) -> None:
    store = tmp_path / "store"
    book_a = project(tmp_path / "project-a", "alpha", "helper-a")
    first_a, _, _ = restored_twice_and_cold(book_a, store)
    book_copy = project(tmp_path / "copy", "alpha", "helper-a")  # the same files, written later
    copy = run(book_copy, store)
    assert (copy.summary["start"], copy.summary["snapshot"]) == ("restored", first_a.summary["snapshot"]), copy.summary
    assert copy.cells[1] == ["alpha helper-a\n"]
