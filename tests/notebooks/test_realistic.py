"""Common data-science setups: restored twice, each run prints exactly what a cold run of the notebook prints."""

from __future__ import annotations

from pathlib import Path

from jupyter_snapkernel.notebook.state import notebook_file_state
from jupyter_snapkernel.paths import open_store
from tests.notebooks.harness import build, notebook, restored_twice_and_cold, run


def test_pandas_setup_restores_like_a_cold_run(tmp_path: Path) -> None:
    (tmp_path / "sales.csv").write_text("region,units\nnorth,3\nsouth,5\nnorth,7\neast,1\n")
    book = notebook(
        tmp_path / "pandas.ipynb",
        ["import pandas as pd\nsales = pd.read_csv('sales.csv')\nby_region = sales.groupby('region').units.sum()"],
        ["print(by_region.to_dict())\nsales.describe()"],
    )
    restored_twice_and_cold(book, tmp_path / "store")


def test_matplotlib_inline_setup_builds_and_plots_inline(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "plots.ipynb",
        ["%matplotlib inline\nimport matplotlib\nimport matplotlib.pyplot as plt\nplt.plot([1, 2, 3])"],
        ["print(matplotlib.get_backend())\nfigure = plt.figure()\nplt.plot([3, 1, 2])\nplt.show()"],
    )
    first, _, _ = restored_twice_and_cold(book, tmp_path / "store")
    assert "inline" in first.cells[1][0], first.cells[1]
    assert any("<image/png sha256:" in output for output in first.cells[1]), "the figure is shown inline"


def test_scikit_learn_with_two_jobs_in_setup(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "model.ipynb",
        [
            "from sklearn.datasets import load_iris\nfrom sklearn.linear_model import LogisticRegression\n"
            "from sklearn.model_selection import GridSearchCV, cross_val_score\nX, y = load_iris(return_X_y=True)\n"
            "search = GridSearchCV(LogisticRegression(max_iter=500), {'C': [0.1, 1.0]}, n_jobs=2, cv=3).fit(X, y)"
        ],
        ["print(search.best_params_)\nprint(cross_val_score(search.best_estimator_, X, y, cv=3, n_jobs=2).round(4))"],
    )
    restored_twice_and_cold(book, tmp_path / "store")


def test_joblib_parallel_in_setup_and_after(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "parallel.ipynb",
        ["from joblib import Parallel, delayed\nsquares = Parallel(n_jobs=2)(delayed(pow)(i, 2) for i in range(8))"],
        ["print(squares, Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(4)))"],
    )
    restored_twice_and_cold(book, tmp_path / "store")


def test_top_level_await_in_setup_keeps_running_after_restore(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "aio.ipynb",
        [
            "import asyncio\nticks = [0]\nready = asyncio.Event()\n"
            "async def tick():\n    while True:\n        ticks[0] += 1\n        await asyncio.sleep(0.01)\n"
            "task = asyncio.create_task(tick())\nawait asyncio.sleep(0.05)\nready.set()"
        ],
        ["before = ticks[0]\nawait asyncio.sleep(0.2)\nawait ready.wait()\nprint('ticking:', ticks[0] > before)"],
    )
    first, _, _ = restored_twice_and_cold(book, tmp_path / "store")
    assert first.cells[1] == ["ticking: True\n"]


def test_launch_time_zone_and_argv_apply_to_a_restored_kernel(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "clock.ipynb",
        ["import datetime, sys, time\nbuilt_in = time.tzname"],
        ["print(time.tzname, datetime.datetime.now().strftime('%H'), sys.argv[1], sys.argv[2].endswith('.json'))"],
    )
    built = build(book, tmp_path / "store", env={"TZ": "UTC"})
    assert built.returncode == 0, built.stderr
    tokyo = {"TZ": "Asia/Tokyo"}
    cold = run(book, tmp_path / "store", env=tokyo, cold=True)
    for _ in range(2):
        restored = run(book, tmp_path / "store", env=tokyo)
        assert restored.summary["start"] == "restored"
        assert restored.cells == cold.cells
        assert restored.cells[1][0].startswith("('JST', 'JST')")


def test_restored_kernels_get_their_own_multiprocessing_authkey(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "keys.ipynb",
        ["import multiprocessing\nat_build = multiprocessing.current_process().authkey"],
        ["key = multiprocessing.current_process().authkey\nprint(key.hex(), key != at_build)"],
    )
    assert build(book, tmp_path / "store").returncode == 0
    first, second = (run(book, tmp_path / "store") for _ in range(2))
    assert first.summary["start"] == second.summary["start"] == "restored"
    assert first.cells[1] != second.cells[1], "two restored kernels have different authkeys"
    assert first.cells[1][0].strip().endswith("True")


def test_sqlite_connection_open_in_setup_is_refused_with_what_to_do(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "results.ipynb",
        ["import sqlite3\ndb = sqlite3.connect('results.db')\ndb.execute('create table if not exists t (x)')"],
        ["db.execute('insert into t values (1)')\ndb.commit()"],
    )
    built = build(book, tmp_path / "store")
    assert built.returncode == 1
    assert "results.db open for writing" in built.stderr and "before_snapshot" in built.stderr, built.stderr
    assert "Traceback" not in built.stderr


def test_sqlite_closed_before_the_snapshot_restores_while_the_database_grows(tmp_path: Path) -> None:
    book = notebook(
        tmp_path / "growing.ipynb",
        [
            "import sqlite3\nfrom jupyter_snapkernel import after_restore, before_snapshot\n"
            "db = sqlite3.connect('results.db')\ndb.execute('create table if not exists t (x)')\n"
            "@before_snapshot\ndef close():\n    db.close()\n"
            "@after_restore\ndef reopen():\n    global db\n    db = sqlite3.connect('results.db')"
        ],
        ["db.execute('insert into t values (1)')\ndb.commit()\nprint('stored', db.execute('select 1').fetchone())"],
    )
    restored_twice_and_cold(book, tmp_path / "store")  # the database grows with every run


def test_changed_inputs_make_the_snapshot_stale_and_the_run_computes_on_them(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n1\n2\n3\n")
    (tmp_path / "helpers.py").write_text("FACTOR = 1\n")
    book = notebook(
        tmp_path / "inputs.ipynb",
        ["import os\nimport helpers\nrows = open('data.csv').read().split()[1:]\nscale = os.environ.get('SCALE', '1')"],
        ["print('rows', len(rows), 'sum', sum(map(int, rows)) * helpers.FACTOR * int(scale))"],
    )
    store = tmp_path / "store"
    for change, reason, env in (
        (lambda: (tmp_path / "data.csv").write_text("a\n1\n2\n3\n100\n"), "data.csv changed since the snapshot", {}),
        (lambda: (tmp_path / "helpers.py").write_text("FACTOR = 2\n"), "helpers.py changed since the snapshot", {}),
        (lambda: None, "environment variable SCALE changed since the snapshot", {"SCALE": "5"}),
    ):
        assert build(book, store).returncode == 0
        assert run(book, store).summary["start"] == "restored"
        change()
        if not env:  # the toolbar, the REST API and %snapshot status all read this state
            state = notebook_file_state([open_store(store)], book)
            assert (state.state, state.reasons) == ("stale", [reason]), state
        stale = run(book, store, env=env)
        assert (stale.summary["start"], stale.summary["reason"]) == ("cold", f"stale: {reason}"), stale.summary
        assert stale.cells == run(book, store, env=env, cold=True).cells
    assert stale.cells[1] == ["rows 4 sum 1060\n"]


def test_inputs_the_notebook_ignores_do_not_make_it_stale(tmp_path: Path) -> None:
    (tmp_path / "log.txt").write_text("first\n")
    book = notebook(
        tmp_path / "ignoring.ipynb",
        ["notes = open('log.txt').read()"],
        ["print(len(notes))"],
        metadata={"ignore_inputs": ["log.txt"]},
    )
    assert build(book, tmp_path / "store").returncode == 0
    (tmp_path / "log.txt").write_text("first\nsecond\n")
    assert run(book, tmp_path / "store").summary["start"] == "restored"


def test_a_file_held_open_that_changed_makes_the_snapshot_stale_and_a_rebuild_restores(tmp_path: Path) -> None:
    (tmp_path / "blob.bin").write_bytes(b"x" * 100)
    book = notebook(
        tmp_path / "blob.ipynb",
        # A C library holds the file open: no Python-level read, so not a recorded input.
        ["import ctypes, os\nheld = ctypes.CDLL(None).open(b'blob.bin', os.O_RDONLY)"],
        ["print('held', held > 0)"],
    )
    store = tmp_path / "store"
    assert build(book, store).returncode == 0
    with open(tmp_path / "blob.bin", "ab") as blob:
        blob.write(b"grown")  # CRIU reopens an open file only at the size it had: caught before any restore
    stale = run(book, store)
    assert stale.summary["start"] == "cold", stale.summary
    assert stale.summary["reason"] == f"stale: {tmp_path / 'blob.bin'} changed since the snapshot"
    state = notebook_file_state([open_store(store)], book)
    assert (state.state, state.rebuild) == ("stale", True), "stale, never unusable: a rebuild fixes it"
    assert build(book, store).returncode == 0
    assert run(book, store).summary["start"] == "restored"
