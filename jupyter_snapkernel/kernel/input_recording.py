"""Record what setup cells read from outside the process: files, local modules and environment variables.

A snapshot holds the results of those reads; when one of them changes, the snapshot is stale. Reads
from inside the Python environment (the standard library, installed packages, the interpreter) and
from tool caches and settings in hidden folders are not inputs of the notebook.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SYSTEM_DIRS = (
    "/usr/", "/lib/", "/lib64/", "/bin/", "/sbin/", "/etc/", "/proc/", "/sys/", "/dev/", "/run/",
    "/var/lib/", "/var/cache/",
)  # fmt: skip
# Frames of these modules are the environment mapping itself, between a reader and os.environ.
MAPPING_MODULES = {"os", "_collections_abc", "collections.abc"}


def _environment_dirs() -> tuple[str, ...]:
    """Folders whose files belong to the Python environment, not to the notebook."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *site.getsitepackages(), site.getusersitepackages()}
    paths |= {value for key, value in sysconfig.get_paths().items() if key in {"stdlib", "platstdlib", "purelib"}}
    return tuple(os.path.join(os.path.realpath(path), "") for path in paths if path)


ENVIRONMENT_DIRS = _environment_dirs()
HOME = os.path.expanduser("~")  # read once: looking it up while recording would record it


def is_notebook_input(path: str) -> bool:
    """Tell whether a file read by setup code is an input of the notebook (see the module docstring)."""
    if not path.startswith("/") or path.startswith(SYSTEM_DIRS) or "/__pycache__/" in path:
        return False
    real = os.path.realpath(path)
    if real.startswith(ENVIRONMENT_DIRS) or real.startswith(SYSTEM_DIRS):
        return False
    if real.startswith(os.path.join(HOME, "")):
        # Settings and caches of tools (~/.cache, ~/.config, ~/.ipython, ~/.local): not the notebook's data.
        return not any(part.startswith(".") for part in Path(real).relative_to(HOME).parts[:-1])
    return True


@dataclass
class InputRecorder:
    """Collects reads while active; one per build."""

    files: set[str] = field(default_factory=set)
    # Files opened by a relative path: in a setup such a path means the notebook's folder, wherever it is.
    opened_relative: set[str] = field(default_factory=set)
    variables: set[str] = field(default_factory=set)
    modules_before: set[str] = field(default_factory=set)
    active: bool = False

    def audit(self, event: str, args: tuple[Any, ...]) -> None:
        """Audit hook: note files opened for reading."""
        if not self.active or event != "open":
            return
        path, mode, flags = args  # the "open" event's arguments (builtin open, os.open, io.open_code)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return
        reading = ("r" in mode and "+" not in mode) if isinstance(mode, str) else (flags or 0) & os.O_ACCMODE == 0
        if reading:
            absolute = os.path.abspath(path)
            if is_notebook_input(absolute):
                self.files.add(absolute)
                if not os.path.isabs(path):
                    self.opened_relative.add(absolute)

    def note_variable(self, name: object) -> None:
        """Note an environment variable read by the notebook's own code (a cell or a local module)."""
        if not self.active:
            return
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__") in MAPPING_MODULES:
            frame = frame.f_back  # type: ignore[assignment]
        if frame is not None and isinstance(name, str) and is_notebook_input(frame.f_code.co_filename):
            self.variables.add(name)

    def local_modules(self) -> set[str]:
        """Source files of modules the setup imported from outside the environment."""
        found = set()
        for name in set(sys.modules) - self.modules_before:
            path = getattr(sys.modules.get(name), "__file__", None)
            if isinstance(path, str) and is_notebook_input(os.path.abspath(path)):
                found.add(os.path.abspath(path))
        return found

    def report(self) -> dict[str, Any]:
        """What the setup read: files (local modules included), those opened by a relative path, and environment
        variable names."""
        files = {path for path in self.files | self.local_modules() if os.path.isfile(path)}
        relative = sorted(files & self.opened_relative)
        return {"files": sorted(files), "relative": relative, "variables": sorted(self.variables)}


_recorder = InputRecorder()
_hook_installed = False


@contextmanager
def recording_inputs() -> Iterator[InputRecorder]:
    """Record the inputs of the code run inside the block."""
    global _hook_installed
    if not _hook_installed:
        sys.addaudithook(_recorder.audit)  # audit hooks cannot be removed: it stays, idle, once recording ends
        _hook_installed = True
    environ_class = type(os.environ)
    original = environ_class.__getitem__

    def getitem(mapping: Any, key: Any) -> Any:
        _recorder.note_variable(key)
        return original(mapping, key)

    _recorder.modules_before = set(sys.modules)
    environ_class.__getitem__ = getitem  # type: ignore[method-assign]
    _recorder.active = True
    try:
        yield _recorder
    finally:
        _recorder.active = False
        environ_class.__getitem__ = original  # type: ignore[method-assign]
