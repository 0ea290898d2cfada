"""User hooks around snapshots, and the reseeding every restored kernel gets."""

from __future__ import annotations

import builtins
import functools
import multiprocessing
import os
import random
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any, TypeVar

Hook = TypeVar("Hook", bound=Callable[[], object])

_before_snapshot: list[Callable[[], object]] = []
_after_restore: list[Callable[[], object]] = []

# The global generators reseed() renews, and the functions that give each a state of the caller's choice.
SEEDERS = {
    "random": ("random", ("seed", "setstate")),
    "numpy.random": ("numpy", ("seed", "set_state")),
    "torch": ("torch", ("manual_seed", "set_rng_state")),
    "torch.random": ("torch", ("manual_seed", "set_rng_state")),
}
# Arguments that name the state (random.seed(a=…), np.random.seed(seed=…), setstate(state=…)): None means "from the OS".
STATE_ARGUMENTS = ("a", "seed", "state", "new_state")
# Generators the setup cells seeded: a cold run draws the same numbers from them every time, so a restored
# kernel keeps the state the setup left. It lives in the kernel's memory, hence in its snapshot.
seeded_by_setup: set[str] = set()


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


def _noting_seeds(function: Callable[..., Any], generator: str) -> Callable[..., Any]:
    """Wrap a seeding function so that its last call says whether the generator is seeded (a chosen seed or
    state) or not (None: from the OS)."""

    @functools.wraps(function)
    def seeding(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        chosen = args[0] if args else next((kwargs[name] for name in STATE_ARGUMENTS if name in kwargs), None)
        if chosen is not None:
            seeded_by_setup.add(generator)
        else:  # seeded from the OS again: cold runs differ from here on, so restored kernels must too
            seeded_by_setup.discard(generator)
        return result

    return seeding


@contextmanager
def recording_seeds() -> Iterator[set[str]]:
    """Note which global generators the code run inside the block seeds, in `seeded_by_setup`.

    Modules imported inside the block (numpy, torch) get their seeding functions wrapped as soon as
    they are loaded, since a cell may import and seed at once; the originals come back at the end.
    """
    originals: dict[tuple[ModuleType, str], Any] = {}
    real_import = builtins.__import__

    def wrap_loaded() -> None:
        for name, (generator, functions) in SEEDERS.items():
            module = sys.modules.get(name)
            for function in functions if module is not None else ():
                current = getattr(module, function, None)
                if current is not None and (module, function) not in originals:
                    originals[(module, function)] = current  # type: ignore[index]
                    setattr(module, function, _noting_seeds(current, generator))

    def importing(*args: Any, **kwargs: Any) -> Any:
        imported = real_import(*args, **kwargs)
        wrap_loaded()
        return imported

    wrap_loaded()
    builtins.__import__ = importing
    try:
        yield seeded_by_setup
    finally:
        if builtins.__import__ is importing:  # a setup that replaced it again keeps its own
            builtins.__import__ = real_import
        for (module, function), original in originals.items():
            if getattr(getattr(module, function, None), "__wrapped__", None) is original:
                setattr(module, function, original)


def reseed() -> None:
    """Give this process fresh randomness (kernels restored from one image must differ), but keep the state
    of the global generators the setup seeded: there a cold run draws the same numbers every time."""
    if "random" not in seeded_by_setup:
        random.seed(os.urandom(32))
    # It authenticates multiprocessing's pools and managers: a shared one would let kernels restored
    # from one snapshot talk to each other's.
    multiprocessing.current_process().authkey = os.urandom(32)
    # tempfile draws names from its own Random created on first use; drop it to make a new one.
    tempfile._name_sequence = None  # type: ignore[attr-defined]
    numpy = sys.modules.get("numpy")
    if numpy is not None and "numpy" not in seeded_by_setup:
        numpy.random.seed(int.from_bytes(os.urandom(4), "little"))
    torch = sys.modules.get("torch")
    if torch is not None and "torch" not in seeded_by_setup:
        torch.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
