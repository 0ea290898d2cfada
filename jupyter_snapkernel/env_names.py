"""The SNAPKERNEL_* environment variables of the Jupyter layer, each named once (the engine's are in engine/)."""

from __future__ import annotations

# Settings an administrator can set for every user (read by config.SnapKernelSettings).
ENABLED = "SNAPKERNEL_ENABLED"
STORE = "SNAPKERNEL_STORE"
SHARED_ROOTS = "SNAPKERNEL_SHARED_ROOTS"
SHARED_ROOT_OWNERS = "SNAPKERNEL_SHARED_ROOT_OWNERS"
AUTO_BUILD = "SNAPKERNEL_AUTO_BUILD"
VERIFY = "SNAPKERNEL_VERIFY"
BUILD_TIMEOUT = "SNAPKERNEL_BUILD_TIMEOUT"
RESTORE_POINT_SECONDS = "SNAPKERNEL_RESTORE_POINT_SECONDS"
GPU_STATE = "SNAPKERNEL_GPU_STATE"
RESTORE_NETWORK = "SNAPKERNEL_RESTORE_NETWORK"
SPARE_KERNELS = "SNAPKERNEL_SPARE_KERNELS"
SPARE_MEMORY_BYTES = "SNAPKERNEL_SPARE_MEMORY_BYTES"
SPARE_IDLE_SECONDS = "SNAPKERNEL_SPARE_IDLE_SECONDS"
QUOTA_BYTES = "SNAPKERNEL_QUOTA_BYTES"
MAX_SNAPSHOTS = "SNAPKERNEL_MAX_SNAPSHOTS"
MAX_CONCURRENT_BUILDS = "SNAPKERNEL_MAX_CONCURRENT_BUILDS"
MAX_QUEUED_BUILDS = "SNAPKERNEL_MAX_QUEUED_BUILDS"
REGISTRIES = "SNAPKERNEL_REGISTRIES"
PUSH_ON_BUILD = "SNAPKERNEL_PUSH_ON_BUILD"

# What a launcher tells one kernel.
COLD = "SNAPKERNEL_COLD"  # start this kernel cold, even with a snapshot
START = "SNAPKERNEL_START"  # JSON: why a kernel started cold, and its notebook
REPLAY_SETUP = "SNAPKERNEL_REPLAY_SETUP"  # a restored kernel replays the setup cells' outputs
START_NOTES = "SNAPKERNEL_START_NOTES"  # a kernel announces how it started with its first cell
PROVISIONED = "SNAPKERNEL_PROVISIONED"  # a provisioner decided this launch: the kernelspec's launcher only runs it
NOTEBOOK = "SNAPKERNEL_NOTEBOOK"  # the notebook a kernel starts for, where no Jupyter server names it
