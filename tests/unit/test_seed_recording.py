"""Which global generators a build's setup seeded: only those keep their state through reseed()."""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import pytest

from jupyter_snapkernel import hooks


@pytest.fixture(autouse=True)
def no_seeds_noted() -> Iterator[None]:
    """Each test starts and ends with no generator noted as seeded."""
    hooks.seeded_by_setup.clear()
    yield
    hooks.seeded_by_setup.clear()


def test_seeded_generators_keep_their_state_through_reseed_and_unseeded_ones_do_not() -> None:
    originals = (random.seed, np.random.seed)
    with hooks.recording_seeds():
        random.seed(0)
        np.random.seed(1)
        np.random.seed()  # from the OS again: nothing to keep
    assert hooks.seeded_by_setup == {"random"}
    assert (random.seed, np.random.seed) == originals, "the originals are back once the setup ended"
    kept, numpy_state = random.getstate(), np.random.get_state()[1].tolist()
    hooks.reseed()
    assert random.getstate() == kept
    assert np.random.get_state()[1].tolist() != numpy_state


def test_a_module_imported_and_seeded_in_one_cell_is_noted() -> None:
    torch = pytest.importorskip("torch")
    with hooks.recording_seeds():
        exec("import numpy\nnumpy.random.set_state(numpy.random.get_state())\nimport torch\ntorch.manual_seed(7)")
    assert hooks.seeded_by_setup == {"numpy", "torch"}
    assert torch.manual_seed.__module__ == "torch.random", "the original function is back"
    drawn = torch.rand(3)
    torch.manual_seed(7)
    hooks.reseed()
    assert torch.equal(torch.rand(3), drawn), "torch keeps the state the setup's seed gave it"
