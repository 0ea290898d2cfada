"""A notebook's setup section: its code cells from the top through the marked cell."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SNAPSHOT_TAG = "snapshot"
PARAMETERS_TAG = "parameters"  # papermill's: its parameters are injected as a cell right after this one
CELL_MAGIC = "%%snapshot"
# nbformat's schemas, found without importing nbformat (its import takes most of a second)
NBFORMAT_DIR = Path(importlib.util.find_spec("nbformat").submodule_search_locations[0])  # type: ignore[index, union-attr]


def normalise(source: str | list[str]) -> str:
    """Return a cell's source with unified line endings and no trailing blanks."""
    text = "".join(source) if isinstance(source, list) else source
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def _tags(cell: dict[str, Any]) -> list[str]:
    """A cell's tags."""
    tags = cell.get("metadata", {}).get("tags")
    return tags if isinstance(tags, list) else []


def is_marked(cell: dict[str, Any]) -> bool:
    """Tell whether a code cell marks the end of the setup section."""
    if SNAPSHOT_TAG in _tags(cell):
        return True
    first_line = normalise(cell.get("source", "")).split("\n", 1)[0].strip()
    return first_line == CELL_MAGIC or first_line.startswith(CELL_MAGIC + " ")


@dataclass(frozen=True)
class SetupSection:
    """The setup cells' normalised sources and their hash, and the inputs the notebook says to ignore."""

    cells: tuple[str, ...]
    # Patterns (file paths, absolute or relative to the notebook, or variable names) whose changes do not
    # make a snapshot stale: notebook metadata {"snapkernel": {"ignore_inputs": [...]}}.
    ignore_inputs: tuple[str, ...] = ()
    # Where the setup cells are in the notebook's list of cells (the marked last one is positions[-1]).
    positions: tuple[int, ...] = field(default=(), compare=False)
    # The notebook's own choice whether its snapshot keeps GPU state: metadata {"snapkernel": {"gpu_state": …}}
    # (None: the administrator's setting decides, SnapKernelSettings.gpu_state).
    gpu_state: bool | None = field(default=None, compare=False)
    # The setup cells that always get a restore point, by index in `cells`: the marked ones (tagged `snapshot`
    # or started with %%snapshot; the last setup cell is always marked), and papermill's `parameters` cell, so
    # that a run with parameters injected after it restores the setup before them.
    marked: tuple[int, ...] = field(default=(), compare=False)

    @property
    def setup_hash(self) -> str:
        """sha256 over the normalised sources (outputs, ids and metadata do not count)."""
        return self.prefix_hash(len(self.cells))

    def prefix_hash(self, cells: int) -> str:
        """The key of the restore point after the first `cells` setup cells: the setup hash of those alone."""
        digest = hashlib.sha256()
        for source in self.cells[:cells]:
            encoded = source.encode()
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
        return digest.hexdigest()


def setup_section_of(notebook: dict[str, Any]) -> SetupSection | None:
    """Return the setup section of a notebook (nbformat 4 JSON), or None when no cell is marked."""
    code_cells = [
        (index, cell) for index, cell in enumerate(notebook.get("cells", [])) if cell.get("cell_type") == "code"
    ]
    marked = [order for order, (_, cell) in enumerate(code_cells) if is_marked(cell)]
    if not marked:
        return None
    setup = code_cells[: marked[-1] + 1]
    parameters = [order for order, (_, cell) in enumerate(setup) if PARAMETERS_TAG in _tags(cell)]
    settings = notebook.get("metadata", {}).get("snapkernel", {})
    if not isinstance(settings, dict):
        settings = {}
    ignore = settings.get("ignore_inputs", [])
    gpu_state = settings.get("gpu_state")
    return SetupSection(
        tuple(normalise(cell.get("source", "")) for _, cell in setup),
        tuple(str(pattern) for pattern in ignore) if isinstance(ignore, list) else (),
        positions=tuple(index for index, _ in setup),
        gpu_state=gpu_state if isinstance(gpu_state, bool) else None,
        marked=tuple(sorted({*marked, *parameters[:1]})),
    )


def cells_problem(cells: object) -> str | None:
    """Say in one line how a list of cells sent by a client (type, source, tags) is malformed; None when it is not."""
    if not isinstance(cells, list):
        return "`cells` must be a list of cells"
    for index, cell in enumerate(cells):
        where = f"cells[{index}]"
        if not isinstance(cell, dict) or not isinstance(cell.get("cell_type"), str):
            return f"{where} must be an object with a string `cell_type`"
        source = cell.get("source", "")
        if not isinstance(source, str) and not (
            isinstance(source, list) and all(isinstance(line, str) for line in source)
        ):
            return f"{where}.source must be a string or a list of strings"
        metadata = cell.get("metadata", {})
        if not isinstance(metadata, dict):
            return f"{where}.metadata must be an object"
        tags = metadata.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            return f"{where}.metadata.tags must be a list of strings"
    return None


class NotebookError(ValueError):
    """A notebook file that cannot be read, or that is not a valid notebook; the message is one line.

    The message names the file by its name only (it may reach API clients); `naming` words it with
    another name: the path a terminal user gave, or the API path a client sent.
    """

    def __init__(self, path: str | Path, problem: str, *, unreadable: bool = False) -> None:
        """The file, what is wrong with it, and whether it could not be read at all (an OSError)."""
        self.path = Path(path)
        self.problem = problem
        self.unreadable = unreadable
        super().__init__(self.naming(self.path.name))

    def naming(self, name: str) -> str:
        """The message, with the notebook called `name`."""
        return (
            f"cannot read {name}: {self.problem}"
            if self.unreadable
            else f"{name} is not a valid notebook: {self.problem}"
        )


MAX_DETAIL_CHARS = 160  # of a validation message, which quotes the offending value
JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """Collapse whitespace to single spaces and cut the text at `limit` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_path(parts: Iterable[str | int]) -> str:
    """Where in a document a validation error is, as in `cells[2].source`."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _schema_problem(book: dict[str, Any]) -> str | None:
    """The first way a notebook breaks nbformat's schema, in one line; None when it is valid."""
    major, minor = book.get("nbformat"), book.get("nbformat_minor", 0)
    if type(major) is not int or type(minor) is not int or not (NBFORMAT_DIR / f"v{major}").is_dir():
        return f"unknown nbformat version {_one_line(repr(major), 20)}.{_one_line(repr(minor), 20)}"
    if (major, minor) >= (4, 5) and isinstance(book.get("cells"), list):
        # As nbformat's own reader does: cells written without an id get one (the schema requires it).
        for cell in book["cells"]:
            if isinstance(cell, dict) and "id" not in cell:
                cell["id"] = secrets.token_hex(4)
    if major == 4 and _valid_notebook_4(minor, book):
        return None
    # The wording of the problem (or a notebook of an older major version): nbformat's own validation, whose
    # import takes most of a second (jsonschema's format checkers), only on this path.
    from nbformat.validator import iter_validate

    error = next(iter_validate(book), None)
    if error is None:
        return None
    where = _json_path(getattr(error, "relative_path", ()))
    return f"{where}: {_one_line(error.message)}" if where else _one_line(error.message)


@functools.lru_cache(maxsize=8)
def _notebook_4_check(minor: int) -> Callable[[Any], Any]:
    """nbformat's schema of version 4.`minor` (its latest for a newer minor), compiled by fastjsonschema."""
    import fastjsonschema

    schema = NBFORMAT_DIR / "v4" / f"nbformat.v4.{minor}.schema.json"
    if not schema.is_file():
        schema = NBFORMAT_DIR / "v4" / "nbformat.v4.schema.json"
    return fastjsonschema.compile(json.loads(schema.read_text()))


def _valid_notebook_4(minor: int, book: dict[str, Any]) -> bool:
    """Whether a notebook of version 4 meets its schema (the check nbformat itself runs first)."""
    import fastjsonschema

    try:
        _notebook_4_check(minor)(book)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def read_notebook(path: str | Path) -> dict[str, Any]:
    """Read a notebook file and check it against nbformat's schema; return it as nbformat 4 JSON.

    Raise NotebookError, naming the file and the first problem, when it cannot be read or is not a
    valid notebook. Every reader of notebooks in snapkernel goes through here.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise NotebookError(path, error.strerror or str(error), unreadable=True) from error
    if not data.strip():
        raise NotebookError(path, "the file is empty")
    try:
        book = json.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise NotebookError(path, "it is not UTF-8 text") from None
    except RecursionError:
        raise NotebookError(path, "its JSON is nested too deeply") from None
    except ValueError as error:
        raise NotebookError(path, f"it is not JSON ({_one_line(str(error))})") from None
    if not isinstance(book, dict):
        kind = JSON_TYPES.get(type(book), type(book).__name__)
        raise NotebookError(path, f"the top level is a JSON {kind}, not an object")
    try:
        problem = _schema_problem(book)
    except RecursionError:
        problem = "its JSON is nested too deeply"
    if problem is not None:
        raise NotebookError(path, problem)
    if book["nbformat"] < 4:
        import nbformat

        book = nbformat.convert(nbformat.from_dict(book), 4)
    return book


def read_setup_section(path: str | Path) -> SetupSection | None:
    """Read a notebook file from disk and return its setup section; raise NotebookError if it is not valid."""
    return setup_section_of(read_notebook(path))
