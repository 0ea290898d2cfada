"""Notebook setup sections: which cells they hold, how they are hashed, and how bad notebooks are refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from jupyter_snapkernel.notebook.setup_section import (
    NotebookError,
    SetupSection,
    cells_problem,
    is_marked,
    normalise,
    read_notebook,
    read_setup_section,
    setup_section_of,
)


def code(source: str | list[str], tags: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A code cell of nbformat 4 JSON."""
    cell = {"cell_type": "code", "source": source, "metadata": {"tags": tags or []}, "outputs": []}
    return {**cell, "execution_count": None, **extra}


def markdown(source: str) -> dict[str, Any]:
    """A markdown cell of nbformat 4 JSON."""
    return {"cell_type": "markdown", "source": source, "metadata": {}}


def notebook(*cells: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A notebook of nbformat 4.4 JSON holding `cells`."""
    return {"cells": list(cells), "metadata": metadata or {}, "nbformat": 4, "nbformat_minor": 4}


def write(path: Path, book: object) -> Path:
    """Write JSON data to `path` and return it."""
    path.write_text(json.dumps(book))
    return path


# -- normalise ------------------------------------------------------------------------------------


def test_normalise_joins_a_list_source_into_one_text() -> None:
    """nbformat's list-of-lines form and the string form normalise to the same text."""
    assert normalise(["import os\n", "x = 1\n"]) == normalise("import os\nx = 1\n") == "import os\nx = 1"


def test_normalise_unifies_line_endings_and_drops_trailing_blanks() -> None:
    """CRLF and CR become LF; trailing spaces and blank lines around the source go, indentation stays."""
    assert normalise("\r\n\nif x:  \r\n    y = 1\t\rz = 2\n\n\n") == "if x:\n    y = 1\nz = 2"


# -- is_marked ------------------------------------------------------------------------------------


def test_a_snapshot_tag_marks_a_cell() -> None:
    """The `snapshot` tag marks a cell whatever its source."""
    assert is_marked(code("x = 1", tags=["other", "snapshot"]))


def test_a_snapshot_cell_magic_on_the_first_line_marks_a_cell() -> None:
    """`%%snapshot` alone or with arguments on the first line marks the cell."""
    assert is_marked(code("%%snapshot\nx = 1"))
    assert is_marked(code(["%%snapshot  --quiet\n", "x = 1"]))
    assert is_marked(code("\n   \n%%snapshot\nx = 1"))


def test_similar_words_and_later_lines_do_not_mark_a_cell() -> None:
    """A longer magic name, the magic below the first line, or no tags at all leave a cell unmarked."""
    assert not is_marked(code("%%snapshotting\nx = 1"))
    assert not is_marked(code("x = 1\n%%snapshot"))
    assert not is_marked({"cell_type": "code", "source": "x = 1", "metadata": {"tags": None}})
    assert not is_marked({"cell_type": "code"})


# -- setup_section_of -----------------------------------------------------------------------------


def test_a_notebook_without_a_marked_cell_has_no_setup_section() -> None:
    """Nothing is marked: no section."""
    assert setup_section_of(notebook(code("x = 1"), markdown("%%snapshot"))) is None


def test_the_section_runs_from_the_top_through_the_last_marked_code_cell() -> None:
    """Code cells through the last marked one, markdown skipped, with their indexes in the notebook."""
    book = notebook(
        markdown("# Title"),
        code("import os", tags=["snapshot"]),
        code("x = 1\r\n"),
        markdown("text"),
        code("%%snapshot\ny = 2"),
        code("print(x)"),
    )
    section = setup_section_of(book)
    assert section is not None
    assert section.cells == ("import os", "x = 1", "%%snapshot\ny = 2")
    assert section.positions == (1, 2, 4)
    assert section.marked == (0, 2), "every marked cell is a restore point; the last ends the setup"


def test_a_restore_point_is_keyed_by_the_cells_up_to_it_alone() -> None:
    """The key of the point after k cells is the setup hash of those k cells; the last point's is the setup's."""
    whole = SetupSection(("import os", "x = 1", "y = 2"))
    edited = SetupSection(("import os", "x = 1", "y = 3"))
    assert whole.prefix_hash(3) == whole.setup_hash
    assert whole.prefix_hash(2) == SetupSection(("import os", "x = 1")).setup_hash == edited.prefix_hash(2)
    assert whole.prefix_hash(3) != edited.prefix_hash(3)
    assert len({whole.prefix_hash(cells) for cells in range(4)}) == 4


def test_ignore_inputs_come_from_the_notebook_metadata() -> None:
    """`{"snapkernel": {"ignore_inputs": [...]}}` lists the patterns, as strings."""
    book = notebook(code("x = 1", tags=["snapshot"]), metadata={"snapkernel": {"ignore_inputs": ["data.csv", 7]}})
    section = setup_section_of(book)
    assert section is not None
    assert section.ignore_inputs == ("data.csv", "7")


@pytest.mark.parametrize("settings", [{"ignore_inputs": "data.csv"}, ["ignore_inputs"], "off"])
def test_malformed_snapkernel_metadata_ignores_nothing(settings: object) -> None:
    """A snapkernel setting of the wrong type is treated as absent."""
    section = setup_section_of(notebook(code("x = 1", tags=["snapshot"]), metadata={"snapkernel": settings}))
    assert section is not None
    assert section.ignore_inputs == ()


def test_the_setup_hash_ignores_outputs_ids_metadata_and_line_endings() -> None:
    """Only the normalised sources count towards the hash."""
    plain = setup_section_of(notebook(code("import os\nx = 1", tags=["snapshot"])))
    decorated = setup_section_of(
        notebook(
            markdown("intro"),
            code(["import os  \r\n", "x = 1\r\n"], tags=["snapshot", "x"], id="abc", execution_count=3),
            metadata={"kernelspec": {"name": "snapkernel"}},
        )
    )
    assert plain is not None and decorated is not None
    assert plain == decorated
    assert plain.setup_hash == decorated.setup_hash
    assert plain.positions != decorated.positions, "positions do not take part in comparisons"


def test_the_setup_hash_changes_with_the_sources_and_the_cell_boundaries() -> None:
    """Editing a cell, or moving a line to another cell, gives another hash."""
    hashes = {
        SetupSection(("a = 1", "b = 2")).setup_hash,
        SetupSection(("a = 1", "b = 3")).setup_hash,
        SetupSection(("a = 1\nb = 2",)).setup_hash,
        SetupSection(("a = 1b = 2",)).setup_hash,
        SetupSection(("a = 1b", " = 2")).setup_hash,
    }
    assert len(hashes) == 5
    assert all(len(value) == 64 and int(value, 16) >= 0 for value in hashes)


# -- cells_problem --------------------------------------------------------------------------------


def test_well_formed_cells_have_no_problem() -> None:
    """Cells with a type, a string or list-of-strings source and string tags are accepted."""
    assert cells_problem([]) is None
    assert cells_problem([code("x = 1", tags=["snapshot"]), code(["a\n", "b"]), {"cell_type": "markdown"}]) is None


@pytest.mark.parametrize(
    ("cells", "problem"),
    [
        ({"cells": []}, "`cells` must be a list of cells"),
        (["x = 1"], "cells[0] must be an object with a string `cell_type`"),
        ([code("x"), {"source": "y"}], "cells[1] must be an object with a string `cell_type`"),
        ([{"cell_type": 3}], "cells[0] must be an object with a string `cell_type`"),
        ([code(7)], "cells[0].source must be a string or a list of strings"),  # type: ignore[arg-type]
        ([code(["a", 1])], "cells[0].source must be a string or a list of strings"),  # type: ignore[list-item]
        ([{"cell_type": "code", "metadata": []}], "cells[0].metadata must be an object"),
        ([{"cell_type": "code", "metadata": {"tags": "snapshot"}}], "cells[0].metadata.tags must be a list of strings"),
        ([{"cell_type": "code", "metadata": {"tags": [None]}}], "cells[0].metadata.tags must be a list of strings"),
    ],
)
def test_malformed_cells_are_described_in_one_line(cells: object, problem: str) -> None:
    """The first malformed part of a client's cells is named, with its position."""
    assert cells_problem(cells) == problem


# -- read_notebook --------------------------------------------------------------------------------


def test_a_valid_notebook_file_gives_its_setup_section(tmp_path: Path) -> None:
    """A notebook on disk is read, validated, and gives the same section as its JSON."""
    book = notebook(code("import os", tags=["snapshot"]), code("print(1)"))
    path = write(tmp_path / "setup.ipynb", book)
    assert read_setup_section(path) == setup_section_of(book)


def test_cells_of_a_notebook_4_5_without_ids_get_ids(tmp_path: Path) -> None:
    """As nbformat's reader does, cells that lack the id the 4.5 schema requires are given one."""
    book = {**notebook(code("x = 1")), "nbformat_minor": 5}
    cell = read_notebook(write(tmp_path / "ids.ipynb", book))["cells"][0]
    assert isinstance(cell["id"], str) and cell["id"]


def test_a_missing_notebook_cannot_be_read(tmp_path: Path) -> None:
    """An OSError is reported as unreadable, naming the file by its name only."""
    with pytest.raises(NotebookError) as caught:
        read_notebook(tmp_path / "gone.ipynb")
    assert caught.value.unreadable
    assert str(caught.value) == "cannot read gone.ipynb: No such file or directory"
    assert caught.value.naming("notebooks/gone.ipynb") == "cannot read notebooks/gone.ipynb: No such file or directory"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "the file is empty"),
        (b"  \n\t", "the file is empty"),
        (b'{"cells": "\xff"}', "it is not UTF-8 text"),
        (b"{not json", "it is not JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        (b"[1, 2]", "the top level is a JSON array, not an object"),
        (b'"text"', "the top level is a JSON string, not an object"),
        (b"null", "the top level is a JSON null, not an object"),
        (b"[" * 100_000 + b"]" * 100_000, "its JSON is nested too deeply"),
        (b'{"nbformat": 9, "nbformat_minor": 0, "cells": []}', "unknown nbformat version 9.0"),
        (b'{"nbformat": "4", "cells": []}', "unknown nbformat version '4'.0"),
    ],
)
def test_files_that_are_not_notebooks_are_refused_with_the_reason(tmp_path: Path, content: bytes, problem: str) -> None:
    """Each way a file can fail to be a notebook gets a one-line reason naming the file."""
    path = tmp_path / "bad.ipynb"
    path.write_bytes(content)
    with pytest.raises(NotebookError) as caught:
        read_notebook(path)
    assert not caught.value.unreadable
    assert caught.value.problem == problem
    assert str(caught.value) == f"bad.ipynb is not a valid notebook: {problem}"


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """Notebooks saved with a BOM read like any other."""
    path = tmp_path / "bom.ipynb"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(notebook(code("x = 1", tags=["snapshot"]))).encode())
    assert read_setup_section(path) == SetupSection(("x = 1",))


def test_a_schema_violation_names_where_it_is(tmp_path: Path) -> None:
    """A cell that breaks nbformat's schema is refused with its path in the document."""
    book = notebook(code("x = 1"), code(5))  # type: ignore[arg-type]
    with pytest.raises(NotebookError) as caught:
        read_notebook(write(tmp_path / "schema.ipynb", book))
    assert caught.value.problem == "cells[1].source: 5 is not valid under any of the given schemas"
