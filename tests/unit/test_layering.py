"""Layering, by folder: the engine never uses the Jupyter layer, and each folder of the Jupyter layer imports
only the folders of the processes it may run in (kernel/, launch/, server/, notebook/, cli/)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

KERNEL_LIBRARIES = ("IPython", "ipykernel")
ENGINE_FOLDER = REPO / "engine"  # the layer's folder in the repository
ENGINE_PACKAGE = "snapkernel_engine"  # the package in it, as installed
JUPYTER_PACKAGE = "jupyter_snapkernel"
# The folders of the Jupyter layer, and those each one must never import. Top-level modules (config, paths,
# env_names, hooks, answers) import none of the folders.
FOLDERS = ("kernel", "launch", "launcher", "server", "notebook", "cli")
FORBIDDEN = {
    "notebook": {"kernel", "launch", "launcher", "server", "cli"},  # shared by every process: below all of them
    "kernel": {"launch", "launcher", "server", "cli"},  # the kernel process starts no kernels and serves no API
    "launch": {"kernel", "server", "cli", "launcher"},  # runs in a server, a CLI or a launcher process
    "launcher": {"kernel", "server", "cli"},  # the kernelspec's own process: it starts the kernel, serves nothing
    "server": {"kernel", "cli", "launcher"},
    "cli": {"kernel", "server", "launcher"},
    "": set(FOLDERS),
}
NO_KERNEL_LIBRARIES = ("launch", "launcher", "server", "notebook", "cli")  # a server or a CLI process loads no IPython


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


def modules_in(folder: Path, package: str) -> list[str]:
    """Every module under `folder` (the folder holding `package`), by its dotted name."""
    return sorted(
        ".".join(path.relative_to(folder).with_suffix("").parts).removesuffix(".__init__")
        for path in (folder / package).rglob("*.py")
        if "labextension" not in path.parts
    )


def imported_modules(root: Path, relative: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in the module at root/relative, at module level or in a
    function; relative imports are resolved, and `from X import name` counts as importing X.name too."""
    parts = list(relative.with_suffix("").parts)
    here = parts[: len(parts) - 1]  # the module's package, as path parts from `root`
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse((root / relative).read_text(), filename=str(relative))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(here[: len(here) - node.level + 1] if node.level else [])
            module = ".".join(filter(None, [base, node.module or ""]))
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def folder_of(module: str) -> str | None:
    """The folder of the Jupyter layer a dotted module name lies in ("" for a top-level module), or None."""
    parts = module.split(".")
    if parts[0] != JUPYTER_PACKAGE:
        return None
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else ""


def layering_violations() -> list[str]:
    """Imports in the Jupyter layer that cross into a folder their own folder must not use."""
    violations = []
    for path in sorted((REPO / JUPYTER_PACKAGE).rglob("*.py")):
        relative = path.relative_to(REPO)
        if "labextension" in relative.parts:
            continue
        own = folder_of(".".join(relative.with_suffix("").parts))
        for line, name in imported_modules(REPO, relative):
            other = folder_of(name)
            if other and own is not None and other in FORBIDDEN[own]:
                violations.append(f"{relative}:{line}: {own or 'a top-level module'} imports {name}")
    return violations


def test_each_folder_imports_only_the_folders_below_it() -> None:
    """notebook/ imports no other folder; kernel/ and launch/ import neither each other nor server/ or cli/;
    server/ and cli/ never import kernel/ or each other; top-level modules import no folder."""
    assert layering_violations() == []


def test_the_layering_rule_sees_a_forbidden_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule is not vacuous: a server module that imports the kernel's folder is reported."""
    fake = tmp_path / JUPYTER_PACKAGE / "server"
    fake.mkdir(parents=True)
    (fake / "leak.py").write_text("from ..kernel.app import SnapKernelApp\nfrom ..config import SnapKernelSettings\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    assert layering_violations() == [
        f"{Path(JUPYTER_PACKAGE, 'server', 'leak.py')}:1: server imports {JUPYTER_PACKAGE}.kernel.app",
        f"{Path(JUPYTER_PACKAGE, 'server', 'leak.py')}:1: server imports {JUPYTER_PACKAGE}.kernel.app.SnapKernelApp",
    ]


@pytest.mark.parametrize("folder", NO_KERNEL_LIBRARIES)
def test_server_and_cli_side_folders_do_not_load_ipython_or_ipykernel(folder: str) -> None:
    """Importing every module of launch/, server/, notebook/ or cli/ loads no kernel library (a Jupyter server
    or a CLI command stays free of IPython)."""
    modules = [name for name in modules_in(REPO, JUPYTER_PACKAGE) if folder_of(name) == folder]
    assert modules, f"no module in {folder}/"
    loaded = loaded_after_import(*modules)
    assert JUPYTER_PACKAGE in loaded
    assert [name for name in KERNEL_LIBRARIES if name in loaded] == []


def test_every_module_of_the_jupyter_layer_lies_in_a_process_folder_or_is_shared() -> None:
    """The package's top level holds only the shared modules; everything else is in a process's folder."""
    top_level = sorted(path.stem for path in (REPO / JUPYTER_PACKAGE).glob("*.py"))
    assert top_level == ["__init__", "answers", "config", "env_names", "hooks", "paths"]
    assert sorted(path.name for path in (REPO / JUPYTER_PACKAGE).iterdir() if path.is_dir() and
                  (path / "__init__.py").exists()) == sorted(FOLDERS)  # fmt: skip


def test_importing_every_engine_module_loads_nothing_of_the_jupyter_layer() -> None:
    """The engine is Jupyter-free: all of it imports without jupyter_snapkernel (or IPython)."""
    modules = modules_in(ENGINE_FOLDER, ENGINE_PACKAGE)
    assert "snapkernel_engine.store" in modules and "snapkernel_engine.control_pipe" in modules
    loaded = loaded_after_import(*modules)
    assert ENGINE_PACKAGE in loaded
    assert [name for name in (JUPYTER_PACKAGE, *KERNEL_LIBRARIES) if name in loaded] == []


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
                if name.split(".")[0] == JUPYTER_PACKAGE
            ]
    assert offending == []
