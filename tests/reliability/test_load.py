"""Sixteen sessions of one notebook at once through a real server: all restored, all working, nothing left after."""

from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil

from tests.users import value

SESSIONS = 16
SETUP = ["import numpy as np\nweights = np.arange(1_000_000, dtype=np.float64)\nlabel = 'trained'"]


def tree(pid: int) -> list[psutil.Process]:
    """A process and every live process below it."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_sixteen_sessions_at_once_all_restore_work_and_leave_no_process(make_user: Any, user_server: Any) -> None:
    """An ordinary user's server: 16 sessions started together, each uses the setup's state, all shut down."""
    user = make_user()
    notebook = user.write_notebook("work/load.ipynb", SETUP, marked=0)
    built = user.jupyter("build", str(notebook))
    assert built.returncode == 0, built.stdout + built.stderr
    server = user_server(user, notebook.parent, {"SNAPKERNEL_AUTO_BUILD": "0"})

    began = time.monotonic()
    with ThreadPoolExecutor(SESSIONS) as pool:
        starts = list(pool.map(lambda _: server.start_session("load.ipynb"), range(SESSIONS)))
    print(f"{SESSIONS} sessions started in {time.monotonic() - began:.1f} s")  # a figure for the record, not a test
    assert [start["start"] for start in starts] == ["restored"] * SESSIONS, [start["reason"] for start in starts]

    def use_the_setup(start: dict[str, Any]) -> Any:
        with server.client(start["kernel_id"]) as client:
            return value(client, "[float(weights.sum()), label]")

    with ThreadPoolExecutor(SESSIONS) as pool:
        answers = list(pool.map(use_the_setup, starts))
    assert answers == [[499999500000.0, "trained"]] * SESSIONS, answers
    during = tree(server.process.pid)

    for session in server.request("GET", "api/sessions").json():
        assert server.request("DELETE", f"api/sessions/{session['id']}").status_code == 204
    assert server.request("GET", "api/kernels").json() == []
    server.stop()
    _, alive = psutil.wait_procs(during, timeout=10)
    assert [process for process in alive if process.is_running()] == [], "every process of every tree is gone"
    assert subprocess.run(["pgrep", "-u", user.name], capture_output=True).stdout == b"", "nothing of the user runs"
