"""Which network a restored kernel runs in, and the ipc connection a kernel in a network of its own is handed.

CUDA binds an abstract unix socket named after each process's PID, and restored copies keep their PIDs: two
live kernels restored from one GPU snapshot collide in one network namespace. Restored into a network
namespace of its own, a kernel has only a loopback of its own, so the server cannot reach TCP ports it
listens on there; unix sockets bound at a path work across network namespaces (a path is a file, not a
network address), so such a kernel is handed a connection over `transport: ipc` instead.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir

from snapkernel_engine import Manifest

IPC_PREFIX = "k"  # each socket is PREFIX-N in the kernel's folder: short, as unix socket paths must be
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes, the last a NUL
LONGEST_SUFFIX = len("-65535")
FOLDER_PREFIX = "sk-ipc-"
FOLDER_NAME_SHAPE = FOLDER_PREFIX + "x" * 8  # mkdtemp adds 8 characters


def restores_in_own_network(manifest: Manifest, setting: str, *, ipc: bool = True) -> bool:
    """Whether a restore of `manifest` runs in a network namespace of its own (`setting`:
    SnapKernelSettings.restore_network): 'own' always, 'host' never, 'auto' for GPU snapshots only (CPU
    kernels keep the host's network, which they need). Never where the kernel's connection cannot be over
    `ipc` (a TCP connection file that an editor chose): the server could not reach the kernel there."""
    if not ipc or setting == "host":
        return False
    return setting == "own" or bool(manifest.cuda_pids)


def connection_transport(connection_file: str) -> str:
    """The transport a connection file names ('tcp' where it names none or cannot be read)."""
    try:
        with open(connection_file) as handle:
            info = json.load(handle)
    except (OSError, ValueError):
        return "tcp"
    return str(info.get("transport", "tcp")) if isinstance(info, dict) else "tcp"


def private_ipc_folder() -> Path:
    """A new folder for one kernel's ipc sockets that only this user can enter (0700): in Jupyter's runtime
    folder, or in the temporary folder where the runtime folder's path is too long for a unix socket."""
    parent = Path(jupyter_runtime_dir())
    if len(str(parent / FOLDER_NAME_SHAPE / IPC_PREFIX)) + LONGEST_SUFFIX > SOCKET_PATH_MAX:
        parent = Path(tempfile.gettempdir())
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX, dir=parent))
