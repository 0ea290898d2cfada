"""A restored kernel's environment and plotting backend are a cold kernel's: the launch, then what the setup did."""

from __future__ import annotations

import os
from pathlib import Path

from tests.notebooks.harness import build, notebook, restored_twice_and_cold, run

SHOW_ENVIRONMENT = (
    "import os\n"
    "for name in ['OMP_NUM_THREADS', 'ANALYSIS_REMOVED', 'ANALYSIS_CHANGED', 'ANALYSIS_UNTOUCHED', 'MPLBACKEND']:\n"
    "    print(name, os.environ.get(name))"
)
# Variables a cold launch has and a restore's launch does not, by design: how the kernel started, and the parent
# PID ipykernel watches (a restored kernel's parent is the restore's namespace).
LAUNCH_ONLY = ("JPY_PARENT_PID", "SNAPKERNEL_COLD", "SNAPKERNEL_START")
PLOT_AFTER_SETUP = (
    "import matplotlib\nimport matplotlib.pyplot as plt\n"
    "print(os.environ.get('MPLBACKEND'), matplotlib.get_backend())\nplt.plot([3, 1, 2])\nplt.show()"
)


def test_setup_environment_changes_survive_a_restore_and_untouched_launch_variables_take_the_new_launch(
    tmp_path: Path,
) -> None:
    """The setup sets, changes and removes variables; the next launch's values win only where it did not."""
    book = notebook(
        tmp_path / "environment.ipynb",
        [
            "import os\nos.environ['OMP_NUM_THREADS'] = '1'\ndel os.environ['ANALYSIS_REMOVED']\n"
            "os.environ['ANALYSIS_CHANGED'] = 'set by the setup'"
        ],
        [SHOW_ENVIRONMENT],
    )
    store = tmp_path / "store"
    at_build = {"ANALYSIS_REMOVED": "build", "ANALYSIS_CHANGED": "build", "ANALYSIS_UNTOUCHED": "build"}
    built = build(book, store, env=at_build)
    assert built.returncode == 0, built.stdout + built.stderr
    at_launch = {"ANALYSIS_REMOVED": "launch", "ANALYSIS_CHANGED": "launch", "ANALYSIS_UNTOUCHED": "launch"}
    restored = run(book, store, env=at_launch)
    cold = run(book, store, cold=True, env=at_launch)
    assert (restored.summary["start"], cold.summary["start"]) == ("restored", "cold"), restored.summary
    assert restored.cells == cold.cells, (restored.cells, cold.cells)
    assert restored.cells[1] == [
        "OMP_NUM_THREADS 1\nANALYSIS_REMOVED None\nANALYSIS_CHANGED set by the setup\nANALYSIS_UNTOUCHED launch\n"
        "MPLBACKEND module://matplotlib_inline.backend_inline\n"
    ]


def test_restored_kernel_has_the_same_variable_names_as_a_cold_one(tmp_path: Path) -> None:
    """No variable of the build (its store, its session) leaks into a restored kernel, none is missing."""
    book = notebook(
        tmp_path / "names.ipynb",
        ["import os\nos.environ['OMP_NUM_THREADS'] = '1'"],
        [f"import os\nprint(sorted(set(os.environ) - set({LAUNCH_ONLY!r})))"],
    )
    restored_twice_and_cold(book, tmp_path / "store")


def test_figure_made_after_a_setup_without_pyplot_is_shown_inline(tmp_path: Path) -> None:
    """The issue's reproduction: pandas, NumPy and scikit-learn in the setup, pyplot only in a later cell."""
    book = notebook(
        tmp_path / "late-plot.ipynb",
        [
            "import os\nimport numpy as np\nimport pandas as pd\nfrom sklearn.linear_model import LinearRegression\n"
            "frame = pd.DataFrame({'x': np.arange(10.0), 'y': 2 * np.arange(10.0)})\n"
            "model = LinearRegression().fit(frame[['x']], frame['y'])"
        ],
        [PLOT_AFTER_SETUP],
    )
    first, _, _ = restored_twice_and_cold(book, tmp_path / "store")
    inline = "module://matplotlib_inline.backend_inline"
    assert first.cells[1][0] == f"{inline} {inline}\n", first.cells[1]
    assert "<image/png sha256:" in first.cells[1][1], "the figure is shown inline, as in the cold run"


def test_figure_made_after_a_setup_that_imported_pyplot_is_shown_inline(tmp_path: Path) -> None:
    """pyplot imported (and a figure shown) by the setup itself, without %matplotlib: later figures still show."""
    book = notebook(
        tmp_path / "early-plot.ipynb",
        ["import os\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()"],
        [PLOT_AFTER_SETUP],
    )
    first, _, _ = restored_twice_and_cold(book, tmp_path / "store")
    assert "<image/png sha256:" in first.cells[1][1], first.cells[1]


def test_launch_that_chooses_a_backend_keeps_it_when_the_setup_did_not_plot(tmp_path: Path) -> None:
    """MPLBACKEND given by the restore's launch (not the build's) wins over ipykernel's default, as in a cold run."""
    assert "MPLBACKEND" not in os.environ, "the test's own launches decide the backend"
    book = notebook(tmp_path / "agg.ipynb", ["import os\nimport numpy as np"], [PLOT_AFTER_SETUP])
    store = tmp_path / "store"
    built = build(book, store)
    assert built.returncode == 0, built.stdout + built.stderr
    restored = run(book, store, env={"MPLBACKEND": "agg"})
    cold = run(book, store, cold=True, env={"MPLBACKEND": "agg"})
    assert restored.summary["start"] == "restored", restored.summary
    assert restored.cells == cold.cells == [[], ["agg agg\n"]], (restored.cells, cold.cells)
