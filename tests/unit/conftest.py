"""The unit tier: pure logic, without root, CRIU or kernels (`.venv/bin/pytest tests/unit -q`)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment without any SNAPKERNEL_* variable (restored after the test)."""
    for name in list(os.environ):
        if name.startswith("SNAPKERNEL_"):
            monkeypatch.delenv(name)
    return monkeypatch
