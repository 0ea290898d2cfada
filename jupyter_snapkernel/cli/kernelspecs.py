"""`jupyter snapkernel kernelspec install|list|remove`: kernelspecs bound to one notebook, for frontends and runners
that name no notebook (VS Code, papermill, nbclient, scripts)."""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..config import PROVISIONER_NAME, SnapKernelSettings
from ..notebook.binding import KERNELSPEC_ARG, LAUNCHER_MODULE, NOTEBOOK_ARG, argv_value
from ..notebook.setup_section import read_setup_section

NAME_PREFIX = "snapkernel-"


def default_name(notebook: Path) -> str:
    """`snapkernel-` and the notebook's name, in the characters a kernelspec's name may hold."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", notebook.stem.lower()).strip("-._") or "notebook"
    return NAME_PREFIX + stem


def bound_spec(notebook: Path, name: str, display_name: str) -> dict[str, object]:
    """The kernel.json of a kernelspec bound to `notebook`: its argv names the notebook, whoever runs it."""
    launcher = [sys.executable, "-m", LAUNCHER_MODULE, KERNELSPEC_ARG, name, NOTEBOOK_ARG, str(notebook)]
    return {
        "argv": [*launcher, "-f", "{connection_file}"],
        "display_name": display_name,
        "language": "python",
        "metadata": {"debugger": True, "kernel_provisioner": {"provisioner_name": PROVISIONER_NAME}},
    }


def bound_notebook(argv: list[str]) -> str | None:
    """The notebook a kernelspec's argv binds it to (None: not a kernelspec bound by snapkernel)."""
    return argv_value(argv, NOTEBOOK_ARG) if LAUNCHER_MODULE in argv else None


def install(args: argparse.Namespace) -> int:
    """Install a kernelspec bound to a notebook; print its name and where it is."""
    notebook = args.notebook.resolve()
    section = read_setup_section(notebook)  # NotebookError: one line naming what is wrong with it
    name = (args.name or default_name(notebook)).lower()
    display_name = args.display_name or f"Python 3 (snapshots of {notebook.parent.name}/{notebook.name})"
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "kernel.json").write_text(json.dumps(bound_spec(notebook, name, display_name), indent=1))
        prefix = sys.prefix if args.sys_prefix else args.prefix
        try:
            where = KernelSpecManager().install_kernel_spec(folder, name, user=args.user, prefix=prefix)
        except ValueError as error:  # a name jupyter_client refuses
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"installed kernelspec {name} ({display_name!r}) in {where}")
    if section is None:
        print(f"note: {notebook.name} marks no setup cell yet: its kernels start cold until one is tagged `snapshot`")
    if not SnapKernelSettings().allows_kernelspec(name):
        print(f"note: {name} is not in SnapKernelSettings.allowed_kernelspecs: its kernels will start cold")
    return 0


def list_bound(args: argparse.Namespace) -> int:
    """List the kernelspecs bound to notebooks: name, notebook, and where each is installed."""
    specs = KernelSpecManager().get_all_specs()
    rows = [
        (name, notebook, found["resource_dir"])
        for name, found in sorted(specs.items())
        if (notebook := bound_notebook(found["spec"].get("argv", []))) is not None
    ]
    if args.json:
        print(json.dumps([{"name": n, "notebook": nb, "resource_dir": d} for n, nb, d in rows], indent=1))
        return 0
    if not rows:
        print("no kernelspec is bound to a notebook (`jupyter snapkernel kernelspec install NOTEBOOK.ipynb`)")
    for name, notebook, folder in rows:
        missing = "" if Path(notebook).exists() else "  (notebook missing)"
        print(f"{name:<28} {notebook}{missing}\n{'':<28} {folder}")
    return 0


def remove(args: argparse.Namespace) -> int:
    """Remove a kernelspec bound to a notebook; refuse any other kernelspec."""
    manager = KernelSpecManager()
    try:
        spec = manager.get_kernel_spec(args.name)
    except NoSuchKernel:
        print(f"error: no kernelspec named {args.name}", file=sys.stderr)
        return 1
    if bound_notebook(spec.argv) is None:
        print(
            f"error: {args.name} is not a kernelspec bound to a notebook by snapkernel: left as it is", file=sys.stderr
        )
        return 1
    print(f"removed kernelspec {args.name} from {manager.remove_kernel_spec(args.name)}")
    return 0


def add_kernelspec_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`kernelspec install|list|remove`."""
    kernelspec = commands.add_parser("kernelspec", help="kernelspecs bound to one notebook (VS Code, papermill)")
    actions = kernelspec.add_subparsers(dest="action", required=True)
    installer = actions.add_parser("install", help="install a kernelspec whose kernels restore NOTEBOOK's snapshot")
    installer.add_argument("notebook", type=Path)
    installer.add_argument("--name", default=None, help=f"its name (default: {NAME_PREFIX}NOTEBOOK-NAME)")
    installer.add_argument("--display-name", default=None, help="its name in menus (default: says the notebook)")
    where = installer.add_mutually_exclusive_group()
    where.add_argument("--user", action="store_true", help="install for this user only")
    where.add_argument("--sys-prefix", action="store_true", help="install into this Python's prefix (a venv)")
    where.add_argument("--prefix", default=None, help="install into this prefix")
    installer.set_defaults(handler=install)
    lister = actions.add_parser("list", help="list the kernelspecs bound to notebooks")
    lister.add_argument("--json", action="store_true", help="print JSON")
    lister.set_defaults(handler=list_bound)
    remover = actions.add_parser("remove", help="remove a kernelspec bound to a notebook")
    remover.add_argument("name")
    remover.set_defaults(handler=remove)
