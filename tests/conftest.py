"""The plugins every test can use: pytest_jupyter's server, real Unix users, built stores, a real OCI registry,
and tests/plugin.py."""

pytest_plugins = (
    "pytest_jupyter.jupyter_server",
    "tests.plugin",
    "tests.users",
    "tests.reliability.stores",
    "tests.registry_server",
)
