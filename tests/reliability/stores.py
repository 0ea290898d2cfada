"""Fixtures of the store tests: one snapshot built per module, copied for each test to damage."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import build, write_notebook

SETUP = ["value = 21"]


@dataclass
class Built:
    """A notebook and a store holding the snapshot of its setup cell."""

    notebook: Path
    store: Path
    snapshot: str

    @property
    def folder(self) -> Path:
        """The snapshot's folder."""
        return self.store / "snapshots" / self.snapshot

    def largest_page_image(self) -> Path:
        """The page image that holds most of the kernel's memory."""
        return max((self.folder / "images").glob("pages-*.img"), key=lambda path: path.stat().st_size)


@pytest.fixture(scope="module")
def built_once(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A notebook and its snapshot, built once for the module."""
    root = tmp_path_factory.mktemp("built")
    notebook = write_notebook(root / "analysis.ipynb", SETUP, marked=0, after=["print(value * 2)"])
    return Built(notebook, root / "store", build(notebook, root / "store"))


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A folder every user can reach (pytest's temporary folders are root's alone), removed after the test."""
    path = Path(tempfile.mkdtemp(prefix="snapkernel-test-", dir="/var/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def built(built_once: Built, public_dir: Path) -> Built:
    """A private copy of the built notebook and store, for one test to damage."""
    notebook = public_dir / built_once.notebook.name
    shutil.copy2(built_once.notebook, notebook)
    shutil.copytree(built_once.store, public_dir / "store", symlinks=True)
    return Built(notebook, public_dir / "store", built_once.snapshot)
