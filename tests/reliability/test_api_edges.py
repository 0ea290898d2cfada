"""Rough edges of the REST API (issue 17, item 7): a snapshot id too long for a file name, and hidden folders."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from tests.helpers import write_notebook
from tests.reliability.test_bad_requests import assert_clean, refused, server_errors  # noqa: F401
from tests.server.test_api import jp_server_config  # noqa: F401  (the server with the extension)


async def test_deleting_a_snapshot_id_of_5000_characters_gets_404_in_one_short_line(
    jp_fetch: Any,
    tmp_path: Path,
    server_errors: list[logging.LogRecord],  # noqa: F811  (the imported fixture)
) -> None:
    """No file can have such a name: the answer is a one-line 404 that does not echo the whole id, not a 500."""
    code, answer = await refused(jp_fetch, "snapshots", "a" * 5000, method="DELETE")
    assert code == 404, answer
    assert answer["message"].startswith("no snapshot aaaa") and len(answer["message"]) < 200, answer
    assert_clean(code, answer, tmp_path)
    code, answer = await refused(jp_fetch, "builds", "b" * 5000)
    assert code == 404 and len(answer["message"]) < 200, answer
    assert server_errors == []


@pytest.mark.parametrize("folder", [".secret", "visible/.hidden"])
async def test_a_notebook_in_a_hidden_folder_gets_the_contents_apis_404(
    jp_fetch: Any,
    jp_root_dir: Path,
    tmp_path: Path,
    folder: str,
    server_errors: list[logging.LogRecord],  # noqa: F811  (the imported fixture)
) -> None:
    """status (GET and POST) and builds refuse a notebook the contents API refuses to serve, with the same 404."""
    (jp_root_dir / folder).mkdir(parents=True)
    write_notebook(jp_root_dir / folder / "nb.ipynb", ["x = 1"], marked=0)
    api_path = f"{folder}/nb.ipynb"
    with pytest.raises(HTTPClientError) as contents:
        await jp_fetch("api", "contents", *api_path.split("/"))
    assert contents.value.code == 404
    requests = [
        {"parts": ("status",), "params": {"path": api_path}},
        {"parts": ("status",), "method": "POST", "body": json.dumps({"path": api_path, "cells": []})},
        {"parts": ("builds",), "method": "POST", "body": json.dumps({"path": api_path})},
    ]
    for request in requests:
        parts = request.pop("parts")
        code, answer = await refused(jp_fetch, *parts, **request)
        assert (code, answer["message"]) == (404, f"no notebook at {api_path}"), (parts, answer)
        assert_clean(code, answer, tmp_path)
    assert list(tmp_path.rglob("builds")) == [], "nothing was built"
    assert server_errors == []


async def test_a_hidden_notebook_is_served_when_the_contents_manager_allows_hidden_files(
    jp_fetch: Any, jp_root_dir: Path, jp_serverapp: Any
) -> None:
    """The API follows ContentsManager.allow_hidden, as the contents API does."""
    jp_serverapp.contents_manager.allow_hidden = True
    (jp_root_dir / ".secret").mkdir()
    write_notebook(jp_root_dir / ".secret" / "nb.ipynb", ["x = 1"], marked=0)
    response = await jp_fetch("snapkernel", "api", "status", params={"path": ".secret/nb.ipynb"})
    assert json.loads(response.body)["state"] == "none"
