"""Which notebook a launch is for, the launcher's argv in every form editors write it, and papermill's
parameters as `jupyter snapkernel run -p` injects them."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from jupyter_snapkernel.cli.kernelspecs import bound_notebook, bound_spec, default_name
from jupyter_snapkernel.launcher.arguments import launch_arguments
from jupyter_snapkernel.notebook.binding import NotebookBinding, notebook_binding
from jupyter_snapkernel.notebook.parameters import inject_parameters, parameter_value, parameters_problem
from jupyter_snapkernel.notebook.setup_section import setup_section_of

BOUND = ["--kernelspec", "snapkernel-train", "--notebook", "/work/train.ipynb"]


def test_the_servers_session_wins_then_snapkernel_notebook_then_the_kernelspecs_binding() -> None:
    """The most specific name of the notebook wins: a server's session, a launch's variable, the kernelspec."""
    both = {"JPY_SESSION_NAME": "/lab/open.ipynb", "SNAPKERNEL_NOTEBOOK": "batch.ipynb"}
    assert notebook_binding(both, BOUND, "/runs") == NotebookBinding(
        Path("/lab/open.ipynb"), "the Jupyter server's session"
    )
    named = notebook_binding({"SNAPKERNEL_NOTEBOOK": "batch.ipynb"}, BOUND, "/runs")
    assert named == NotebookBinding(Path("/runs/batch.ipynb"), "SNAPKERNEL_NOTEBOOK")
    bound = notebook_binding({}, BOUND, "/runs")
    assert bound == NotebookBinding(Path("/work/train.ipynb"), "kernelspec snapkernel-train")
    assert notebook_binding({}, ["-f", "x.json"], "/runs") is None


@pytest.mark.parametrize(
    "connection",
    [["-f", "/rt/k.json"], ["--f=/rt/k.json"], ["--f", "/rt/k.json"], ["--IPKernelApp.connection_file=/rt/k.json"]],
)
def test_the_launcher_finds_the_connection_file_however_a_frontend_passes_it(connection: list[str]) -> None:
    """jupyter_client writes `-f X`, VS Code appends `--f=X`; the kernel gets its arguments without ours."""
    arguments = launch_arguments([*BOUND, *connection])
    assert (arguments.kernelspec, arguments.connection_file) == ("snapkernel-train", "/rt/k.json")
    assert arguments.kernel_argv == connection


def test_a_bound_kernelspec_names_its_notebook_in_its_argv_and_only_bound_ones_are_recognised() -> None:
    """`kernelspec install` writes the notebook into the argv; the generic kernelspec binds nothing."""
    spec = bound_spec(Path("/work/My Notebook.ipynb"), default_name(Path("/work/My Notebook.ipynb")), "x")
    argv = spec["argv"]
    assert isinstance(argv, list) and argv[-2:] == ["-f", "{connection_file}"]
    assert default_name(Path("/work/My Notebook.ipynb")) == "snapkernel-my-notebook"
    assert bound_notebook(argv) == "/work/My Notebook.ipynb"
    assert bound_notebook(["python", "-m", "jupyter_snapkernel.launcher", "-f", "{connection_file}"]) is None


def notebook_of(*cells: tuple[str, list[str]]) -> nbformat.NotebookNode:
    """A notebook of (source, tags) code cells."""
    book = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        cell.metadata["tags"] = tags
        book.cells.append(cell)
    return book


def test_parameters_are_injected_after_the_parameters_cell_as_papermill_does_and_replaced_on_a_second_run() -> None:
    """A cell tagged injected-parameters right after the one tagged parameters (at the top without one)."""
    book = notebook_of(("import os", []), ("alpha = 1", ["parameters"]), ("print(alpha)", ["snapshot"]))
    inject_parameters(book, {"alpha": parameter_value("0.5"), "name": parameter_value("run one")})
    assert [cell["source"] for cell in book.cells][1:3] == [
        "alpha = 1",
        "# Parameters\nalpha = 0.5\nname = 'run one'\n",
    ]
    assert book.cells[2]["metadata"]["tags"] == ["injected-parameters"]
    inject_parameters(book, {"alpha": 2})
    assert len(book.cells) == 4 and book.cells[2]["source"] == "# Parameters\nalpha = 2\n"
    plain = notebook_of(("x = 1", ["snapshot"]))
    inject_parameters(plain, {"x": 3})
    assert plain.cells[0]["source"] == "# Parameters\nx = 3\n"
    assert parameters_problem(["alpha", "class"]) == "parameter name 'class' is not a Python variable name"


def test_the_parameters_cell_inside_a_setup_gets_a_restore_point() -> None:
    """papermill injects its parameters after the `parameters` cell: the setup before them is a restore point."""
    inside = setup_section_of(notebook_of(("import os", []), ("alpha = 1", ["parameters"]), ("y = 2", ["snapshot"])))
    assert inside is not None and inside.marked == (1, 2)
    after = setup_section_of(notebook_of(("import os", ["snapshot"]), ("alpha = 1", ["parameters"])))
    assert after is not None and after.marked == (0,)
