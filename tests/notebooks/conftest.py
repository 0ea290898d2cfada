"""The kernel tests' fixtures (a real jupyter_server with snapkernel kernels), for the notebook tests."""

from tests.kernel.conftest import (  # noqa: F401  (fixtures: pytest hands them to tests by name)
    connect,
    jp_server_config,
    kernel_store,
    open_kernel,
    open_session,
    snapkernel_spec,
    store_root,
)
