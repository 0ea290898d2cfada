"""User hooks around snapshots, and the reseeding every restored kernel gets."""

from __future__ import annotations

import multiprocessing
import os
import random
import sys
import tempfile
import traceback
from collections.abc import Callable
from typing import TypeVar

Hook = TypeVar("Hook", bound=Callable[[], object])

_before_snapshot: list[Callable[[], object]] = []
_after_restore: list[Callable[[], object]] = []


def before_snapshot(function: Hook) -> Hook:
    """Register a function to run in the kernel right before it is checkpointed."""
    _before_snapshot.append(function)
    return function


def after_restore(function: Hook) -> Hook:
    """Register a function to run in every kernel restored from a snapshot."""
    _after_restore.append(function)
    return function


def _run(hooks: list[Callable[[], object]]) -> list[str]:
    """Run hooks in order; return the formatted traceback of each one that raised."""
    failures = []
    for hook in hooks:
        try:
            hook()
        except Exception:
            name = getattr(hook, "__qualname__", repr(hook))
            failures.append(f"hook {name} failed:\n{traceback.format_exc()}")
    return failures


def run_before_snapshot() -> list[str]:
    """Run the before_snapshot hooks."""
    return _run(_before_snapshot)


def run_after_restore() -> list[str]:
    """Reseed random number generators, then run the after_restore hooks."""
    reseed()
    return _run(_after_restore)


def reseed() -> None:
    """Give this process fresh randomness: kernels restored from one image must differ."""
    random.seed(os.urandom(32))
    # It authenticates multiprocessing's pools and managers: a shared one would let kernels restored
    # from one snapshot talk to each other's.
    multiprocessing.current_process().authkey = os.urandom(32)
    # tempfile draws names from its own Random created on first use; drop it to make a new one.
    tempfile._name_sequence = None  # type: ignore[attr-defined]
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
