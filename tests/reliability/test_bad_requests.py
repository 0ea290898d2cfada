"""Bad requests to the REST API through a real jupyter_server: 4xx with a one-line reason, no 500, no server paths."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tornado.httpclient import HTTPClientError

from jupyter_snapkernel.notebook.builder import build_snapshot
from jupyter_snapkernel.paths import open_store
from jupyter_snapkernel.server.handlers import MAX_BODY_BYTES
from snapkernel_engine import SnapshotStore
from tests.helpers import write_notebook
from tests.reliability.test_bad_notebooks import BAD_NOTEBOOKS, symlink_loop, write_bad_notebook
from tests.server.test_api import api, jp_server_config  # noqa: F401  (the server with the extension)

LONG_NAME = "n" * 295 + ".ipynb"  # 301 characters: longer than any file name may be


@pytest.fixture
def store(store_root: Path) -> SnapshotStore:
    """The store the server's extension uses."""
    return open_store(store_root)


@pytest.fixture
def good(jp_root_dir: Path) -> Path:
    """A valid notebook with a marked setup cell in the server's root."""
    return write_notebook(jp_root_dir / "good.ipynb", ["x = 1"], marked=0)


@pytest.fixture
def server_errors(jp_serverapp: Any) -> Iterator[list[logging.LogRecord]]:
    """Records of uncaught exceptions and 5xx answers that the server logs during the test."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            """Keep errors and anything carrying a traceback."""
            if record.levelno >= logging.ERROR or record.exc_info or "Traceback" in record.getMessage():
                records.append(record)

    handler = Collect()
    loggers = [jp_serverapp.log, logging.getLogger("tornado"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    yield records
    for logger in loggers:
        logger.removeHandler(handler)


async def refused(jp_fetch: Any, *parts: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Send a request that must fail; return its status and JSON body."""
    with pytest.raises(HTTPClientError) as error:
        await jp_fetch("snapkernel", "api", *parts, **kwargs)
    response = error.value.response
    assert response is not None, error.value
    return error.value.code, json.loads(response.body)


def assert_clean(code: int, body: dict[str, Any], tmp_path: Path) -> None:
    """A 4xx whose message is one line that names no server path and carries no traceback."""
    assert 400 <= code < 500, (code, body)
    message = body["message"]
    assert "\n" not in message and "Traceback" not in message and not body.get("traceback")
    assert str(tmp_path) not in json.dumps(body), body
    assert "/tmp" not in message and "/root" not in message, message


def build_request(body: bytes | str) -> dict[str, Any]:
    """jp_fetch arguments of a POST builds with a raw body."""
    return {"method": "POST", "body": body}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"path": 5}', "the notebook path must be a string"),
        ('{"path": ["good.ipynb"]}', "the notebook path must be a string"),
        ('{"path": {"name": "good.ipynb"}}', "the notebook path must be a string"),
        ('["good.ipynb"]', "the body must be a JSON object"),
        ('"good.ipynb"', "the body must be a JSON object"),
        ("null", "the body must be a JSON object"),
        ("{path: good.ipynb}", "the body must be JSON"),
        (b'{"path": "\xc3\x28.ipynb"}', "the body must be JSON"),
        ("[" * 20_000 + "]" * 20_000, "the body must be JSON"),
        ('{"path": "\\ud800.ipynb"}', "the notebook path is not valid UTF-8"),
        ("{}", "a notebook path is required"),
        (json.dumps({"path": LONG_NAME}), "a file name in the path is longer than 255 bytes"),
    ],
    ids=[
        "path-a-number",
        "path-a-list",
        "path-an-object",
        "body-a-list",
        "body-a-string",
        "body-null",
        "body-not-json",
        "body-not-utf8",
        "body-nested-too-deeply",
        "path-a-lone-surrogate",
        "no-path",
        "file-name-of-301-characters",
    ],
)
async def test_a_build_request_of_the_wrong_shape_gets_400(
    jp_fetch: Any, good: Path, tmp_path: Path, body: str | bytes, expected: str, server_errors: list[logging.LogRecord]
) -> None:
    """POST builds with a body that is no {"path": "NB.ipynb"} answers 400 saying what is expected."""
    code, answer = await refused(jp_fetch, "builds", **build_request(body))
    assert code == 400
    assert expected in answer["message"]
    assert_clean(code, answer, tmp_path)
    assert server_errors == []


def bad_notebook(root: Path, kind: str) -> tuple[str, int, str]:
    """Put the bad notebook `kind` in the server's root: (its API path, the status it gets, what the message says)."""
    if kind in BAD_NOTEBOOKS:
        write_bad_notebook(root, kind)
        return f"{kind}.ipynb", 400, f"{kind}.ipynb {BAD_NOTEBOOKS[kind][1]}"
    if kind == "symlink-loop":
        symlink_loop(root)
        return "a.ipynb", 400, "a.ipynb: a symbolic link loop"
    if kind == "long-name":
        return LONG_NAME, 400, "a file name in the path is longer than 255 bytes"
    if kind == "directory":
        (root / "folder.ipynb").mkdir()
        return "folder.ipynb", 404, "no notebook at folder.ipynb"
    (root / "notebooks").write_text("a file where a folder should be")
    return "notebooks/x.ipynb", 400, "notebooks/x.ipynb: Not a directory"


REQUESTS: dict[str, Callable[[str], dict[str, Any]]] = {
    "status": lambda path: {"parts": ("status",), "params": {"path": path}},
    "build": lambda path: {"parts": ("builds",), "method": "POST", "body": json.dumps({"path": path})},
}


@pytest.mark.parametrize("request_kind", REQUESTS)
@pytest.mark.parametrize("kind", [*BAD_NOTEBOOKS, "symlink-loop", "long-name", "directory", "file-as-folder"])
async def test_status_and_build_of_a_bad_notebook_get_a_4xx_with_the_reason(
    jp_fetch: Any,
    jp_root_dir: Path,
    tmp_path: Path,
    store: SnapshotStore,
    kind: str,
    request_kind: str,
    server_errors: list[logging.LogRecord],
) -> None:
    """GET status and POST builds of a notebook that is not valid (or no notebook file) answer 4xx, not 500."""
    api_path, status, expected = bad_notebook(jp_root_dir, kind)
    request = REQUESTS[request_kind](api_path)
    code, answer = await refused(jp_fetch, *request.pop("parts"), **request)
    assert (code, answer["message"][: len(expected)]) == (status, expected)
    assert_clean(code, answer, tmp_path)
    assert server_errors == []
    assert store.list() == []


async def test_a_150_mb_body_gets_413_and_the_server_goes_on_answering(
    jp_fetch: Any,
    good: Path,
    tmp_path: Path,
    http_server_port: tuple[Any, int],
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    server_errors: list[logging.LogRecord],
) -> None:
    """A body far over the limit gets 413, sent whole or streamed by a generator; the next requests work."""
    huge = b'{"path": "good.ipynb", "padding": "' + b"x" * 150_000_000 + b'"}'
    code, answer = await refused(jp_fetch, "builds", method="POST", body=huge)
    assert code == 413
    assert f"the body is larger than {MAX_BODY_BYTES} bytes" in answer["message"]
    assert_clean(code, answer, tmp_path)

    def chunks() -> Iterator[bytes]:
        """The same body in 1 MB chunks, without a Content-Length (chunked transfer encoding)."""
        for start in range(0, len(huge), 1_000_000):
            yield huge[start : start + 1_000_000]

    url = f"http://127.0.0.1:{http_server_port[1]}{jp_base_url}snapkernel/api/builds"
    streamed = await asyncio.to_thread(requests.post, url, data=chunks(), headers=jp_auth_header, timeout=60)
    assert streamed.status_code == 413
    assert_clean(streamed.status_code, streamed.json(), tmp_path)

    status = await api(jp_fetch, "status", params={"path": "good.ipynb"})
    assert status["state"] == "none"
    write_notebook(good.with_name("plain.ipynb"), ["x = 1"], marked=-1)
    just_under = json.dumps({"path": "plain.ipynb", "padding": "x" * (MAX_BODY_BYTES - 100)})
    code, answer = await refused(jp_fetch, "builds", method="POST", body=just_under)
    assert code == 422 and "has no setup cell" in answer["message"]  # read and parsed: under the limit
    assert server_errors == []


async def test_deleting_an_unknown_snapshot_gets_404_without_the_store_path(
    jp_fetch: Any, tmp_path: Path, store_root: Path, server_errors: list[logging.LogRecord]
) -> None:
    """DELETE snapshots/ID of no snapshot answers 404 naming the id, not where the store is."""
    code, answer = await refused(jp_fetch, "snapshots", "abcdef123456", method="DELETE")
    assert code == 404
    assert answer["message"] == "no snapshot abcdef123456"
    assert str(store_root) not in json.dumps(answer)
    assert_clean(code, answer, tmp_path)
    assert server_errors == []


async def test_bad_store_entries_are_listed_corrupt_and_sessions_still_restore(
    jp_fetch: Any, store: SnapshotStore, good: Path, open_session: Any, server_errors: list[logging.LogRecord]
) -> None:
    """A stray file and a garbage manifest beside a good snapshot: listed corrupt without paths, sessions restore."""
    built = build_snapshot(good, store)
    (store.snapshots_dir / "README").write_text("notes about my snapshots\n")
    junk = store.snapshots_dir / "0123456789ab"
    junk.mkdir()
    (junk / "manifest.json").write_text("{not json")
    listing = await api(jp_fetch, "snapshots")
    assert [(entry["id"], entry["state"]) for entry in listing["snapshots"]] == [(built.id, "ready")]
    assert {entry["id"]: entry["reason"] for entry in listing["corrupt"]} == {
        "0123456789ab": "manifest.json: not valid JSON (Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1))",
        "README": "a stray file, not a snapshot folder",
    }
    assert str(store.root) not in json.dumps(listing)
    status = await api(jp_fetch, "status", params={"path": "good.ipynb"})
    assert (status["state"], status["snapshot"]) == ("ready", built.id)
    session = await open_session(good)
    assert session.restored and await session.value("x") == 1
    assert server_errors == []
