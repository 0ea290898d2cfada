"""Where snapkernel keeps its snapshots."""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

STORE_ENV_VAR = "SNAPKERNEL_STORE"


def default_store_root() -> Path:
    """Return $SNAPKERNEL_STORE, else ``$JUPYTER_DATA_DIR/snapkernel``."""
    configured = os.environ.get(STORE_ENV_VAR)
    return Path(configured) if configured else Path(jupyter_data_dir()) / "snapkernel"
