"""Inputs read relative to a notebook's folder: a snapshot built in one folder, checked from another."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from jupyter_snapkernel.notebook.setup_section import SetupSection
from jupyter_snapkernel.notebook.state import input_changes
from snapkernel_engine import Manifest, SnapshotStore
from snapkernel_engine.inputs import changed_inputs, fingerprint_inputs, inputs_folder
from tests.unit.test_manifest import manifest


def folder_with(path: Path, data: str) -> Path:
    """A notebook folder holding data.txt and helper.py."""
    path.mkdir()
    (path / "data.txt").write_text(data)
    (path / "helper.py").write_text("NAME = 'helper'\n")
    return path


def recorded_in(folder: Path, shared: Path) -> dict[str, Any]:
    """What a build in `folder` records: its own data.txt and helper.py, and an absolute `shared` file."""
    files = [str(folder / "data.txt"), str(folder / "helper.py"), str(shared)]
    return fingerprint_inputs(files, [], {}, folder=str(folder), relative=[str(folder / "data.txt")])


def test_files_in_the_notebook_folder_are_recorded_relative_to_it_and_others_absolute(tmp_path: Path) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("1,2\n")
    project_a = folder_with(tmp_path / "project-a", "alpha")
    recorded = recorded_in(project_a, shared)
    files = recorded["files"]
    assert isinstance(files, dict)
    assert files[str(project_a / "data.txt")]["relative"] == "data.txt"
    assert files[str(project_a / "helper.py")]["relative"] == "helper.py"
    assert "relative" not in files[str(shared)]
    assert inputs_folder(recorded) == str(project_a)
    assert inputs_folder(fingerprint_inputs([str(shared)], [], {}, folder=str(project_a))) is None


def test_another_folder_with_other_data_sees_the_difference_and_the_same_data_does_not(tmp_path: Path) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("1,2\n")
    project_a = folder_with(tmp_path / "project-a", "alpha")
    recorded = recorded_in(project_a, shared)
    project_b = folder_with(tmp_path / "project-b", "beta!")  # same size, other content
    assert changed_inputs(recorded, {}, base=project_b) == [
        f"data.txt differs here: the snapshot's setup read {project_a / 'data.txt'}"
    ]
    copy = tmp_path / "copy"
    shutil.copytree(project_a, copy)
    os.utime(copy / "data.txt", ns=(1, 1))  # another mtime: the content decides
    assert changed_inputs(recorded, {}, base=copy) == []
    (copy / "helper.py").unlink()
    assert changed_inputs(recorded, {}, base=copy) == [
        f"helper.py does not exist here: the snapshot's setup read {project_a / 'helper.py'}"
    ]
    assert changed_inputs(recorded, {}, ignore=["helper.py"], base=copy) == []


def test_a_change_in_the_built_folder_still_counts_for_a_notebook_elsewhere(tmp_path: Path) -> None:
    # The setup may have named the file by an absolute path: a cold run elsewhere would read this one too.
    shared = tmp_path / "shared.csv"
    shared.write_text("1,2\n")
    project_a = folder_with(tmp_path / "project-a", "alpha")
    recorded = recorded_in(project_a, shared)
    copy = tmp_path / "copy"
    shutil.copytree(project_a, copy)
    (project_a / "data.txt").write_text("changed")
    assert changed_inputs(recorded, {}, base=copy) == [f"{project_a / 'data.txt'} changed since the snapshot"]


def snapshot_of(folder: Path, snapshot_id: str, inputs: dict[str, Any]) -> Manifest:
    """A manifest of the setup key `setup-hash`, built for folder/analysis.ipynb with these inputs."""
    return dataclasses.replace(
        manifest(), id=snapshot_id, inputs=inputs, labels={"notebook": str(folder / "analysis.ipynb")}
    )


def test_each_folder_keeps_its_own_snapshot_of_the_same_cells(tmp_path: Path) -> None:
    shared = tmp_path / "shared.csv"
    shared.write_text("1,2\n")
    project_a = folder_with(tmp_path / "project-a", "alpha")
    project_b = folder_with(tmp_path / "project-b", "beta")
    older_a, b, newer_a = (
        snapshot_of(project_a, "a1", recorded_in(project_a, shared)),
        snapshot_of(project_b, "b1", recorded_in(project_b, shared)),
        snapshot_of(project_a, "a2", recorded_in(project_a, shared)),
    )
    assert SnapshotStore(tmp_path / "store").replaced([older_a, b, newer_a]) == [older_a]
    unbound = [snapshot_of(folder, name, fingerprint_inputs([str(shared)], [], {}, folder=str(folder)))
               for folder, name in ((project_a, "a"), (project_b, "b"))]  # fmt: skip
    assert SnapshotStore(tmp_path / "store").replaced(unbound) == unbound[:1], "a setup bound to no folder serves all"


def test_a_snapshot_that_records_no_folder_is_not_restored_for_another_folder(tmp_path: Path) -> None:
    project_a = folder_with(tmp_path / "project-a", "alpha")
    project_b = folder_with(tmp_path / "project-b", "alpha")
    legacy = fingerprint_inputs([str(project_a / "data.txt")], [], {})  # as recorded before folders were
    section = SetupSection(("data = open('data.txt').read()",))
    built = snapshot_of(project_a, "a1", legacy)
    assert input_changes(built, section, project_a / "analysis.ipynb", {}) == []
    assert input_changes(built, section, project_b / "analysis.ipynb", {}) == [
        f"it was built for {project_a / 'analysis.ipynb'}, and does not record which of its inputs are that folder's"
    ]
