"""The notebook tests run a real jupyter_server whose builds start only when a test asks for one."""

from __future__ import annotations

import pytest
from traitlets.config import Config

from tests.plugin import quiet_server_config


@pytest.fixture
def jp_server_config() -> Config:
    """The server's configuration for these tests."""
    return quiet_server_config()
