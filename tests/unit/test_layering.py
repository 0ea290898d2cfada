"""Layering: the server side never loads the kernel's libraries, and the engine never uses the Jupyter layer."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

KERNEL_LIBRARIES = ("IPython", "ipykernel")
ENGINE_FOLDER = REPO / "engine"  # the layer's folder in the repository
ENGINE_PACKAGE = "snapkernel_engine"  # the package in it, as installed


def loaded_after_import(*modules: str) -> list[str]:
    """The top-level packages in sys.modules of a fresh interpreter after importing `modules`."""
    script = (
        "import importlib, json, sys\n"
        f"for name in {list(modules)!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    loaded: list[str] = json.loads(result.stdout.splitlines()[-1])
    return loaded


def engine_modules() -> list[str]:
    """Every module of the engine package, by its dotted name."""
    return sorted(
        ".".join(path.relative_to(ENGINE_FOLDER).with_suffix("").parts).removesuffix(".__init__")
        for path in (ENGINE_FOLDER / ENGINE_PACKAGE).rglob("*.py")
    )


@pytest.mark.parametrize(
    "module", ["jupyter_snapkernel.provisioner", "jupyter_snapkernel.server_extension", "jupyter_snapkernel.api"]
)
def test_server_side_modules_do_not_load_ipython_or_ipykernel(module: str) -> None:
    """A Jupyter server loading snapkernel's provisioner, extension or API gets no kernel libraries."""
    loaded = loaded_after_import(module)
    assert "jupyter_snapkernel" in loaded
    assert [name for name in KERNEL_LIBRARIES if name in loaded] == []


def test_importing_every_engine_module_loads_nothing_of_the_jupyter_layer() -> None:
    """The engine is Jupyter-free: all of it imports without jupyter_snapkernel (or IPython)."""
    modules = engine_modules()
    assert "snapkernel_engine.store" in modules and "snapkernel_engine.control_pipe" in modules
    loaded = loaded_after_import(*modules)
    assert ENGINE_PACKAGE in loaded
    assert [name for name in ("jupyter_snapkernel", *KERNEL_LIBRARIES) if name in loaded] == []


def test_no_engine_source_imports_the_jupyter_layer() -> None:
    """No import statement in engine/, at module level or inside a function, names jupyter_snapkernel or
    climbs out of the engine package with a relative import."""
    offending = []
    for path in sorted((ENGINE_FOLDER / ENGINE_PACKAGE).rglob("*.py")):
        depth = len(path.relative_to(ENGINE_FOLDER / ENGINE_PACKAGE).parts)  # the levels a relative import may climb
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > depth:
                    offending.append(
                        f"{path.relative_to(REPO)}:{node.lineno}: relative import above the engine package"
                    )
                names = [node.module or ""]
            else:
                continue
            offending += [
                f"{path.relative_to(REPO)}:{node.lineno}: imports {name}"
                for name in names
                if name.split(".")[0] == "jupyter_snapkernel"
            ]
    assert offending == []
