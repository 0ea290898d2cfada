"""Reliability tests share the kernel tests' fixtures, as the server tests do."""

from tests.kernel.conftest import (  # noqa: F401
    connect,
    kernel_store,
    notebook,
    open_kernel,
    open_session,
    snapkernel_spec,
    store_root,
)
