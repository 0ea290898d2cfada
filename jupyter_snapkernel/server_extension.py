"""The jupyter_server extension: settings and the REST API."""

from __future__ import annotations

from typing import Any

from .api import handlers
from .builds import build_manager
from .config import SnapKernelSettings


def _load_jupyter_server_extension(serverapp: Any) -> None:
    """Register the API handlers with the server."""
    settings = SnapKernelSettings(parent=serverapp)
    web_app = serverapp.web_app
    web_app.settings["snapkernel_settings"] = settings
    web_app.settings["snapkernel_builds"] = build_manager
    web_app.add_handlers(".*$", handlers(web_app.settings["base_url"]))
    serverapp.log.info(
        "snapkernel: API at %ssnapkernel/api/, store %s", web_app.settings["base_url"], settings.user_store_root
    )
