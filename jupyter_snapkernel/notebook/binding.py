"""Which notebook a kernel is started for, whoever starts it: jupyter_server, nbclient, papermill or an editor."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .. import env_names

LAUNCHER_MODULE = "jupyter_snapkernel.launcher"  # what every snapkernel kernelspec's argv runs
KERNEL_MODULE = "jupyter_snapkernel.kernel.app"  # the kernel itself: run cold by the launcher, or as a build
CLI_MODULE = "jupyter_snapkernel.cli.commands"  # `jupyter snapkernel`: builds in a process of their own run it
NOTEBOOK_ARG = "--notebook"  # in a bound kernelspec's argv: the notebook's absolute path
KERNELSPEC_ARG = "--kernelspec"  # in a kernelspec's argv: its own name (a launcher has no other way to know it)
SESSION_NAME = "JPY_SESSION_NAME"  # set by jupyter_server (>= 2.0.7) to the notebook's path
NO_NOTEBOOK = (
    "no notebook is known for this kernel (only jupyter_server names it): bind a kernelspec to the notebook "
    f"(`jupyter snapkernel kernelspec install NOTEBOOK.ipynb`) or set {env_names.NOTEBOOK}=NOTEBOOK.ipynb"
)


@dataclass(frozen=True)
class NotebookBinding:
    """The notebook a kernel starts for, and what named it (said by `%snapshot status`)."""

    notebook: Path
    named_by: str  # "the Jupyter server's session", "SNAPKERNEL_NOTEBOOK" or "kernelspec NAME"


def argv_value(argv: Sequence[str], flag: str) -> str | None:
    """The value of `flag` in an argv, written `flag VALUE` or `flag=VALUE` (None: absent)."""
    for index, arg in enumerate(argv):
        if arg == flag and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith(flag + "="):
            return arg[len(flag) + 1 :]
    return None


def notebook_binding(
    env: Mapping[str, str], argv: Sequence[str] = (), cwd: str | None = None
) -> NotebookBinding | None:
    """The notebook this launch is for: the server's session, else SNAPKERNEL_NOTEBOOK, else the kernelspec's
    binding (None: nothing names one). The most specific to this one launch wins."""
    session = env.get(SESSION_NAME, "")
    if session:
        path = Path(session)
        # A relative session name is the notebook's name beside the kernel's working folder.
        notebook = path if path.is_absolute() else Path(cwd or ".") / path.name
        return NotebookBinding(notebook, "the Jupyter server's session")
    named = env.get(env_names.NOTEBOOK, "").strip()
    if named:
        return NotebookBinding(Path(cwd or ".", named).absolute(), env_names.NOTEBOOK)
    bound = argv_value(argv, NOTEBOOK_ARG)
    if bound:
        return NotebookBinding(Path(bound), f"kernelspec {argv_value(argv, KERNELSPEC_ARG) or '?'}")
    return None


def executing_notebook(manager: object) -> dict[str, Any] | None:
    """The notebook an nbclient NotebookClient of this process starts kernel manager `manager` for, as it will run.

    papermill runs a copy of the notebook with its parameters injected as a cell; only the client holds that
    copy, and no Jupyter message names it. The client starts its kernel from a method of its own, which is on
    the call stack of the provisioner's pre_launch, or suspended in a task of this event loop awaiting it
    (jupyter_client starts kernels in a task of their own). None: no client starts this kernel.
    """
    client_class = getattr(sys.modules.get("nbclient.client"), "NotebookClient", None)
    if client_class is None:
        return None
    frames: list[FrameType] = []
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    with contextlib.suppress(RuntimeError):  # no running loop: the stack is all there is
        frames += [frame for task in asyncio.all_tasks() for frame in _suspended_frames(task.get_coro())]
    for frame in frames:
        owner = frame.f_locals.get("self")
        if isinstance(owner, client_class) and getattr(owner, "km", None) is manager:
            book = getattr(owner, "nb", None)
            return book if isinstance(book, dict) else None
    return None


def _suspended_frames(awaitable: object) -> Iterator[FrameType]:
    """The frames of a suspended coroutine and of everything it awaits, outermost first."""
    for _ in range(100):  # a chain of awaits is never this deep: a bound on a loop over foreign objects
        if awaitable is None:
            return
        frame = _first_attribute(awaitable, ("cr_frame", "ag_frame", "gi_frame"))
        if isinstance(frame, FrameType):
            yield frame
        awaitable = _first_attribute(awaitable, ("cr_await", "ag_await", "gi_yieldfrom"))


def _first_attribute(owner: object, names: tuple[str, ...]) -> object:
    """The first of these attributes that `owner` has and that is set (None: none)."""
    return next((value for name in names if (value := getattr(owner, name, None)) is not None), None)
