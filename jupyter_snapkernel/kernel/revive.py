"""Quiesce what a checkpoint cannot carry before the dump, and apply each launch fully after a restore."""

from __future__ import annotations

import gc
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Modules of reusable process pools whose semaphores live in deleted /dev/shm files, which CRIU cannot dump.
LOKY_EXECUTOR_MODULES = ("joblib.externals.loky.reusable_executor", "loky.reusable_executor")
# What ipykernel's start (IPKernelApp.init_gui_pylab) puts into a launch environment only where the launch
# leaves the variable empty: a restore re-derives it from its own launch, as that launch's cold kernel would.
KERNEL_START_DEFAULTS = {"MPLBACKEND": "module://matplotlib_inline.backend_inline"}


@dataclass
class EnvironmentChanges:
    """What a stretch of the build did to os.environ: variables it set or changed, and variables it removed."""

    changed: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @classmethod
    def between(cls, before: Mapping[str, str], after: Mapping[str, str]) -> EnvironmentChanges:
        """The changes that turn the environment `before` into `after`."""
        changed = {name: value for name, value in after.items() if before.get(name) != value}
        return cls(changed, sorted(name for name in before if name not in after))

    def without(self, other: EnvironmentChanges) -> EnvironmentChanges:
        """These changes less the variables that `other` changed or removed."""
        touched = {*other.changed, *other.removed}
        changed = {name: value for name, value in self.changed.items() if name not in touched}
        return EnvironmentChanges(changed, [name for name in self.removed if name not in touched])

    def then(self, later: EnvironmentChanges) -> EnvironmentChanges:
        """These changes followed by `later` ones, as one set of changes."""
        changed = {name: value for name, value in self.changed.items() if name not in later.removed}
        removed = [name for name in self.removed if name not in later.changed and name not in later.removed]
        return EnvironmentChanges({**changed, **later.changed}, sorted([*removed, *later.removed]))

    def apply(self, environment: dict[str, str]) -> None:
        """Make these changes to `environment`."""
        environment.update(self.changed)
        for name in self.removed:
            environment.pop(name, None)


@dataclass
class BuildEnvironment:
    """How the build kernel's environment came to differ from its launch's, recorded for every restore."""

    kernel: EnvironmentChanges  # by the kernel's own start (IPython's TERM, PAGER…; the debugger's imports)
    setup: EnvironmentChanges  # by the setup cells


def restored_environment(launch: Mapping[str, str], build: BuildEnvironment) -> dict[str, str]:
    """The environment a cold kernel of this launch would have after the setup: the launch, what the kernel's
    start sets (its defaults only where the launch leaves them empty), then what the setup did, on top."""
    environment = dict(launch)
    build.kernel.without(EnvironmentChanges(dict(KERNEL_START_DEFAULTS))).apply(environment)
    for name, value in KERNEL_START_DEFAULTS.items():
        if not environment.get(name):
            environment[name] = value
    build.setup.apply(environment)
    return environment


def apply_environment(launch: Mapping[str, str], build: BuildEnvironment) -> None:
    """Replace this process's environment (os.environ and the C library's) with the restored one."""
    environment = restored_environment(launch, build)
    os.environ.clear()  # unsetenv of every build variable, then putenv of each one the restore keeps
    os.environ.update(environment)


def share_event_loop() -> None:
    """Run the setup's top-level awaits on the event loop the restored kernel will run, as a cold kernel does.

    IPython otherwise runs them on a loop of its own that nothing runs after the restore: tasks made there
    never tick again, and asyncio objects bound to it fail in later cells. The loop is made on first use
    only, so setups without awaits hold no loop (and no socket) at the checkpoint.
    """
    import asyncio

    from IPython.core import async_helpers

    ipython_loop = async_helpers.get_asyncio_loop

    def kernel_loop() -> asyncio.AbstractEventLoop:
        loop = ipython_loop()
        asyncio.set_event_loop(loop)  # tornado's IOLoop.current(), the kernel's main loop, wraps it after the restore
        return loop

    async_helpers.get_asyncio_loop = kernel_loop


def quiesce_libraries() -> None:
    """Shut down library state that cannot be checkpointed; it is recreated on first use."""
    for name in LOKY_EXECUTOR_MODULES:
        # The pool itself, if one was made: asking loky for it would start one just to stop it.
        executor = getattr(sys.modules.get(name), "_executor", None)
        if executor is not None:
            executor.shutdown(wait=True, kill_workers=True)
    gc.collect()  # the pools' semaphores are unmapped only once nothing refers to them


def apply_launch(connection_file: str) -> None:
    """Make the restored process look launched now: time zone and argv (the environment is already restored)."""
    time.tzset()  # TZ came with the launch environment; the C library still holds the build's zone
    sys.argv = [sys.argv[0], "-f", connection_file]


def history_to_disk(shell: Any) -> None:
    """Switch the shell's history from the build's in-memory database to the launching user's profile, as a
    cold kernel has it. The build keeps history in memory: an open, growing sqlite file would make every
    restore fail. Should the file be unusable, history stays in memory: no reason to refuse the kernel.
    """
    import sqlite3

    from IPython.core.history import HistorySavingThread
    from IPython.core.profiledir import ProfileDir
    from IPython.paths import get_ipython_dir

    manager = shell.history_manager
    if manager is None or not manager.enabled:
        return
    manager.db.close()
    try:
        # The launch's profile (found or made, as a cold kernel does), not the build's: a shared snapshot
        # may have been built by another user.
        shell.profile_dir = ProfileDir.create_profile_dir_by_name(get_ipython_dir(), shell.profile)
        manager.hist_file = Path(shell.profile_dir.location) / "history.sqlite"
        manager.init_db()
        manager.new_session()
    except (OSError, sqlite3.Error):
        manager.hist_file = ":memory:"
        manager.init_db()
        manager.new_session()
        return
    manager.save_thread = HistorySavingThread(manager)
    manager.save_thread.start()
    manager.using_thread = True
