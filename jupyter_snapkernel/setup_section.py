"""A notebook's setup section: its code cells from the top through the marked cell."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SNAPSHOT_TAG = "snapshot"
CELL_MAGIC = "%%snapshot"


def normalise(source: str | list[str]) -> str:
    """Return a cell's source with unified line endings and no trailing blanks."""
    text = "".join(source) if isinstance(source, list) else source
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    return "\n".join(lines).strip("\n")


def is_marked(cell: dict[str, Any]) -> bool:
    """Tell whether a code cell marks the end of the setup section."""
    if SNAPSHOT_TAG in (cell.get("metadata", {}).get("tags") or []):
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

    @property
    def setup_hash(self) -> str:
        """sha256 over the normalised sources (outputs, ids and metadata do not count)."""
        digest = hashlib.sha256()
        for source in self.cells:
            encoded = source.encode()
            digest.update(len(encoded).to_bytes(8, "big"))
            digest.update(encoded)
        return digest.hexdigest()


def setup_section_of(notebook: dict[str, Any]) -> SetupSection | None:
    """Return the setup section of a notebook (nbformat 4 JSON), or None when no cell is marked."""
    code_cells = [cell for cell in notebook.get("cells", []) if cell.get("cell_type") == "code"]
    marked = [index for index, cell in enumerate(code_cells) if is_marked(cell)]
    if not marked:
        return None
    settings = notebook.get("metadata", {}).get("snapkernel", {})
    ignore = settings.get("ignore_inputs", []) if isinstance(settings, dict) else []
    return SetupSection(
        tuple(normalise(cell.get("source", "")) for cell in code_cells[: marked[-1] + 1]),
        tuple(str(pattern) for pattern in ignore) if isinstance(ignore, list) else (),
    )


def read_setup_section(path: str | Path) -> SetupSection | None:
    """Read a notebook file from disk and return its setup section."""
    with open(path, encoding="utf-8") as handle:
        return setup_section_of(json.load(handle))
