"""Parameters injected into a notebook the way papermill does it, for `jupyter snapkernel run -p NAME VALUE`."""

from __future__ import annotations

import ast
import keyword
import secrets
from typing import Any

from .setup_section import PARAMETERS_TAG

INJECTED_TAG = "injected-parameters"  # papermill's tag of the cell it adds


def parameter_value(text: str) -> object:
    """A value given on the command line: a Python literal where it reads as one (0.5, True, [1, 2]), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def parameters_problem(names: list[str]) -> str | None:
    """Say how a parameter name is unusable as a Python variable (None: all are usable)."""
    for name in names:
        if not name.isidentifier() or keyword.iskeyword(name):
            return f"parameter name {name!r} is not a Python variable name"
    return None


def inject_parameters(notebook: dict[str, Any], parameters: dict[str, object]) -> None:
    """Add (or replace) the cell tagged `injected-parameters`, right after the first cell tagged `parameters`
    (at the top when none is), assigning each parameter: the notebook papermill would run."""
    source = "# Parameters\n" + "".join(f"{name} = {value!r}\n" for name, value in parameters.items())
    cell: dict[str, Any] = {
        "cell_type": "code",
        "id": secrets.token_hex(4),
        "metadata": {"tags": [INJECTED_TAG]},
        "source": source,
        "outputs": [],
        "execution_count": None,
    }
    cells: list[dict[str, Any]] = notebook["cells"]
    tagged = [index for index, each in enumerate(cells) if _has_tag(each, INJECTED_TAG)]
    if tagged:
        cells[tagged[0]] = cell
        return
    anchor = next((index for index, each in enumerate(cells) if _has_tag(each, PARAMETERS_TAG)), -1)
    cells.insert(anchor + 1, cell)


def _has_tag(cell: dict[str, Any], tag: str) -> bool:
    """Whether a cell carries `tag`."""
    tags = cell.get("metadata", {}).get("tags")
    return isinstance(tags, list) and tag in tags
