"""Badly shaped notebooks: one clear line from the reader and the CLI; from the server, a cold kernel that says why."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
import pytest

from jupyter_snapkernel.notebook.setup_section import NotebookError, read_notebook, read_setup_section
from tests.helpers import snapkernel, write_notebook
from tests.server.test_api import api, jp_server_config  # noqa: F401  (the server with the extension)


def notebook_json(**changes: Any) -> dict[str, Any]:
    """A valid notebook as JSON whose second code cell is tagged `snapshot`, with `changes` applied by a path."""
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("y = 2")]
    book.cells[1].metadata["tags"] = ["snapshot"]
    data = json.loads(nbformat.writes(book))
    for path, value in changes.items():
        target = data
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return data


# name: (file content, what the one-line error says)
BAD_NOTEBOOKS: dict[str, tuple[bytes, str]] = {
    "invalid-json": (b'{"cells": [', "is not a valid notebook: it is not JSON"),
    "empty-file": (b"", "is not a valid notebook: the file is empty"),
    "top-level-list": (b'[{"cells": []}]', "is not a valid notebook: the top level is a JSON array, not an object"),
    "source-is-a-number": (
        json.dumps(notebook_json(**{"cells.1.source": 5})).encode(),
        "is not a valid notebook: cells[1].source: 5 is not valid",
    ),
    "tags-a-string": (
        json.dumps(notebook_json(**{"cells.1.metadata.tags": "snapshot"})).encode(),
        "is not a valid notebook: cells[1].metadata.tags: 'snapshot' is not of type 'array'",
    ),
}


def write_bad_notebook(folder: Path, kind: str) -> Path:
    """Write the bad notebook `kind` (a key of BAD_NOTEBOOKS) into `folder` as KIND.ipynb."""
    path = folder / f"{kind}.ipynb"
    path.write_bytes(BAD_NOTEBOOKS[kind][0])
    return path


def symlink_loop(folder: Path) -> Path:
    """a.ipynb -> b.ipynb -> a.ipynb."""
    (folder / "a.ipynb").symlink_to("b.ipynb")
    (folder / "b.ipynb").symlink_to("a.ipynb")
    return folder / "a.ipynb"


def missing(folder: Path) -> Path:
    """A notebook path with no file."""
    return folder / "missing.ipynb"


def directory(folder: Path) -> Path:
    """A directory named like a notebook."""
    (folder / "folder.ipynb").mkdir()
    return folder / "folder.ipynb"


def text_file(folder: Path) -> Path:
    """A file that is no notebook at all."""
    (folder / "notes.txt").write_text("just some notes\n")
    return folder / "notes.txt"


# Paths a command may be given that are no readable notebook: (make it in a folder, what the error says).
UNREADABLE: dict[str, tuple[Callable[[Path], Path], str]] = {
    "missing": (missing, "missing.ipynb: No such file or directory"),
    "directory": (directory, "folder.ipynb: Is a directory"),
    "symlink-loop": (symlink_loop, "a.ipynb: Too many levels of symbolic links"),
    "text-file": (text_file, "notes.txt is not a valid notebook: it is not JSON"),
}


def assert_one_error_line(stderr: str, expected: str) -> None:
    """stderr is one `error: …` line holding `expected`, and no traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    assert expected in lines[0], stderr


@pytest.mark.parametrize("kind", BAD_NOTEBOOKS)
def test_reading_a_bad_notebook_raises_one_line_naming_the_file_and_the_problem(tmp_path: Path, kind: str) -> None:
    """read_setup_section raises NotebookError (a ValueError) with one line: file name, then the first problem."""
    path = write_bad_notebook(tmp_path, kind)
    with pytest.raises(NotebookError) as raised:
        read_setup_section(path)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == f"{kind}.ipynb is not a valid notebook: {raised.value.problem}"
    assert BAD_NOTEBOOKS[kind][1] in str(raised.value)
    assert "\n" not in str(raised.value) and str(tmp_path) not in str(raised.value)


@pytest.mark.parametrize("tags", ["snapshot", "snapshots", "no-snapshot-here"])
def test_tags_given_as_a_string_never_mark_a_cell(tmp_path: Path, tags: str) -> None:
    """A `tags` string is no list of tags: the notebook is refused instead of being matched by substring."""
    path = tmp_path / "tags.ipynb"
    path.write_text(json.dumps(notebook_json(**{"cells.1.metadata.tags": tags})))
    with pytest.raises(NotebookError, match=re.escape("cells[1].metadata.tags")):
        read_setup_section(path)


def test_cells_without_ids_are_read_as_nbformat_reads_them(tmp_path: Path) -> None:
    """Cells of an nbformat 4.5 notebook written without ids are still valid (nbformat gives them ids)."""
    data = notebook_json()
    for cell in data["cells"]:
        del cell["id"]
    path = tmp_path / "no-ids.ipynb"
    path.write_text(json.dumps(data))
    section = read_setup_section(path)
    assert section is not None and section.cells == ("x = 1", "y = 2")


def test_validating_a_notebook_with_megabytes_of_image_output_is_fast(tmp_path: Path) -> None:
    """nbformat's schema check (fastjsonschema) adds milliseconds, not seconds, to reading a 7 MB notebook."""
    book = nbformat.v4.new_notebook()
    image = base64.b64encode(os.urandom(1_000_000)).decode()
    for index in range(5):
        cell = nbformat.v4.new_code_cell(f"plot({index})")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"image/png": image, "text/plain": "<Figure>"})]
        book.cells.append(cell)
    book.cells[0].metadata["tags"] = ["snapshot"]
    book.cells += [nbformat.v4.new_code_cell(f"value_{index} = {index}") for index in range(200)]
    path = tmp_path / "plots.ipynb"
    nbformat.write(book, path)
    read_notebook(path)  # nbformat's validators are compiled on first use
    started = time.perf_counter()
    for _ in range(5):
        read_notebook(path)
    per_read = (time.perf_counter() - started) / 5
    started = time.perf_counter()
    for _ in range(5):
        json.loads(path.read_bytes())
    parse_only = (time.perf_counter() - started) / 5
    size_mb = path.stat().st_size / 1e6
    print(
        f"{size_mb:.1f} MB: read and validated in {per_read * 1e3:.1f} ms, JSON parse alone {parse_only * 1e3:.1f} ms"
    )
    assert per_read < 0.5


@pytest.mark.parametrize("kind", [*BAD_NOTEBOOKS, *UNREADABLE])
@pytest.mark.parametrize("command", [["build"], ["run"], ["bench", "--runs", "1"]], ids=["build", "run", "bench"])
def test_cli_commands_report_a_bad_notebook_in_one_line(tmp_path: Path, kind: str, command: list[str]) -> None:
    """build, run and bench print one `error:` line and exit 1 for a notebook they cannot use; nothing is built."""
    if kind in BAD_NOTEBOOKS:
        path, expected = write_bad_notebook(tmp_path, kind), BAD_NOTEBOOKS[kind][1]
    else:
        make, expected = UNREADABLE[kind]
        path = make(tmp_path)
    result = snapkernel(command[0], str(path), *command[1:], store=tmp_path / "store")
    assert result.returncode == 1
    assert_one_error_line(result.stderr, expected)
    assert str(path) in result.stderr  # named as the user gave it
    assert result.stdout == ""
    assert not (tmp_path / "store" / "snapshots").exists() or not any((tmp_path / "store" / "snapshots").iterdir())


def test_cli_reports_an_unusable_store_in_one_line(tmp_path: Path) -> None:
    """An OSError from the store (here: a path through a file) is one line saying what failed and what to do."""
    notebook = write_notebook(tmp_path / "fine.ipynb", ["x = 1"], marked=0)
    result = snapkernel("build", str(notebook), store=Path("/dev/null/store"))
    assert result.returncode == 1
    assert_one_error_line(
        result.stderr,
        "error: a build cannot start in the snapshot store (Not a directory): the store's path runs through a "
        "file: point the store at a folder (SNAPKERNEL_STORE or --store)",
    )


def test_cli_reports_a_full_disk_in_one_line(tmp_path: Path) -> None:
    """ENOSPC while writing the executed notebook (to /dev/full) is one line saying what to do, not a traceback."""
    notebook = write_notebook(tmp_path / "fine.ipynb", ["x = 1"], marked=0, after=["print(x)"])
    result = snapkernel("run", str(notebook), "--output", "/dev/full", store=tmp_path / "store")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("error: No space left on device") and "free some disk space" in error_lines[0]


@pytest.mark.parametrize("kind", [*BAD_NOTEBOOKS, "symlink-loop"])
async def test_a_session_on_a_bad_notebook_starts_a_working_cold_kernel_that_says_why(
    jp_fetch: Any, jp_root_dir: Path, open_session: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """POST /api/sessions answers 201 with a kernel that runs code; its start report says why it started cold."""
    if kind == "symlink-loop":
        notebook, expected = symlink_loop(jp_root_dir), "cannot read the notebook: Too many levels of symbolic links"
    else:
        notebook, expected = write_bad_notebook(jp_root_dir, kind), BAD_NOTEBOOKS[kind][1]
    session = await open_session(notebook)
    result = await session.execute("1 + 1")
    assert result.status == "ok"
    assert [
        output["content"]["data"]["text/plain"] for output in result.outputs if output["msg_type"] == "execute_result"
    ] == ["2"]
    report = await api(jp_fetch, "kernels", session.kernel_id)
    assert report["start"] == "cold"
    assert report["reason"].startswith("cannot read the notebook: ") and expected in report["reason"]
    assert not [record for record in caplog.records if record.exc_info or "Traceback" in record.getMessage()]
