"""POST checks and GET checks/ID through a real jupyter_server: real builds, real cold and restored kernels."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from traitlets.config import Config

from tests.cli.test_check import HOOKED_AFTER, HOOKED_SETUP
from tests.helpers import write_notebook


@pytest.fixture
def jp_server_config(tmp_path: Path) -> Config:
    return Config(
        {
            "ServerApp": {"jpserver_extensions": {"jupyter_snapkernel": True}},
            "SnapKernelSettings": {
                "store_root": str(tmp_path / "snapshots"),
                "auto_build": False,
                "spare_kernels": False,
            },
        }
    )


async def api(jp_fetch: Any, *parts: str, **kwargs: Any) -> Any:
    response = await jp_fetch("snapkernel", "api", *parts, **kwargs)
    return json.loads(response.body) if response.body else None


async def finished_check(jp_fetch: Any, check_id: str, timeout: float = 300) -> dict[str, Any]:
    """Poll GET checks/ID until the check has ended, within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check = await api(jp_fetch, "checks", check_id)
        if check["state"] != "running":
            return check
        await asyncio.sleep(0.2)
    raise AssertionError(f"check {check_id} still running after {timeout} s")


async def test_a_check_runs_off_the_event_loop_and_answers_equal_or_the_differing_cell(
    jp_fetch: Any, jp_root_dir: Path, snapkernel_spec: Path
) -> None:
    write_notebook(jp_root_dir / "good.ipynb", ["import math\nradius = 2"], 0, ["print(math.pi * radius)"])
    write_notebook(jp_root_dir / "hooked.ipynb", HOOKED_SETUP, 0, HOOKED_AFTER)

    started = await api(jp_fetch, "checks", method="POST", body=json.dumps({"path": "good.ipynb", "runs": 1}))
    assert (started["state"], started["path"], started["differences"]) == ("running", "good.ipynb", [])
    info = await api(jp_fetch, "info")  # the server answers while the check runs
    assert "snapkernel" in info["kernels"]
    good = await finished_check(jp_fetch, started["id"])
    assert (good["state"], good["error"], good["built"]) == ("equal", None, True), good
    assert good["elapsed_s"] > 0

    hooked_id = (await api(jp_fetch, "checks", method="POST", body=json.dumps({"path": "hooked.ipynb"})))["id"]
    hooked = await finished_check(jp_fetch, hooked_id)
    assert hooked["state"] == "different", hooked
    [difference] = hooked["differences"]
    assert (difference["cell"], difference["source"]) == (2, "print('threshold', threshold)")
    assert (difference["cold"], difference["restored"]) == ("threshold 10\n", "threshold 11\n")
    assert "@after_restore" in difference["hint"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"path": "good.ipynb", "runs": 0}, 400, "`runs` must be a whole number from 1 to 10"),
        ({"path": "good.ipynb", "runs": "2"}, 400, "`runs` must be a whole number from 1 to 10"),
        ({"path": "../good.ipynb"}, 403, "the path must stay inside the server's root"),
        ({"path": ".hidden/good.ipynb"}, 404, "no notebook at .hidden/good.ipynb"),
        ({"path": "plain.ipynb"}, 422, "the notebook has no setup cell"),
        ({}, 400, "a notebook path is required"),
    ],
)
async def test_bad_check_requests_are_refused_in_one_line(
    jp_fetch: Any, jp_root_dir: Path, body: dict[str, Any], status: int, message: str
) -> None:
    (jp_root_dir / ".hidden").mkdir()
    write_notebook(jp_root_dir / ".hidden" / "good.ipynb", ["x = 1"], 0)
    write_notebook(jp_root_dir / "good.ipynb", ["x = 1"], 0)
    write_notebook(jp_root_dir / "plain.ipynb", ["x = 1"], -1)
    with pytest.raises(HTTPClientError) as refused:
        await api(jp_fetch, "checks", method="POST", body=json.dumps(body))
    assert refused.value.code == status
    assert json.loads(refused.value.response.body)["message"].startswith(message)


async def test_an_unknown_check_is_404(jp_fetch: Any) -> None:
    with pytest.raises(HTTPClientError) as unknown:
        await api(jp_fetch, "checks", "0123456789ab")
    assert unknown.value.code == 404
