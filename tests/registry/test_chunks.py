"""Content-defined chunks through a real registry: a rebuild after a small edit uploads little."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from jupyter_snapkernel.paths import open_store
from snapkernel_engine.registry.client import Reference
from snapkernel_engine.registry.transfer import push_snapshot
from tests.helpers import REPO, build
from tests.registry_server import Registry

TORCH_EXAMPLE = REPO / "examples" / "torch_setup.ipynb"


def edit_last_setup_cell(notebook: Path) -> None:
    """Change one line of the notebook's last setup cell (the one tagged `snapshot`)."""
    book = json.loads(notebook.read_text())
    last = next(cell for cell in book["cells"] if "snapshot" in cell.get("metadata", {}).get("tags", []))
    source = "".join(last["source"])
    assert 'print(f"setup took' in source
    last["source"] = source.replace('print(f"setup took', 'print(f"the setup took')
    notebook.write_text(json.dumps(book))


def test_a_rebuild_after_a_one_line_change_of_the_last_setup_cell_uploads_at_most_half(
    registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The torch example built whole twice (no restore points: every page is dumped again, at other offsets);
    the second push sends at most half of what the first sent."""
    pytest.importorskip("torch")
    for name, value in {**registry.env(), "SNAPKERNEL_RESTORE_POINT_SECONDS": "0"}.items():
        monkeypatch.setenv(name, value)
    notebook = tmp_path / "torch_setup.ipynb"
    shutil.copy(TORCH_EXAMPLE, notebook)
    store_root = tmp_path / "store"
    reference = Reference.parse(registry.repository("course/torch-chunks"))

    first = push_snapshot(open_store(store_root), build(notebook, store_root), reference)
    edit_last_setup_cell(notebook)
    second = push_snapshot(open_store(store_root), build(notebook, store_root), reference)

    assert first.moved_bytes == first.total_bytes > 300 * 2**20, first
    assert second.snapshot.key != first.snapshot.key and second.snapshot.parent is None
    assert second.moved_bytes <= 0.5 * first.moved_bytes, (second.moved_bytes, first.moved_bytes)
    print(f"first push {first.moved_bytes} bytes, rebuild {second.moved_bytes} of {second.total_bytes} bytes")
    assert os.environ["SNAPKERNEL_RESTORE_POINT_SECONDS"] == "0"
