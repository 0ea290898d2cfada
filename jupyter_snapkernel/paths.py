"""Where snapkernel keeps its snapshots, and the store that knows what a snapshot depends on."""

from __future__ import annotations

import getpass
import os
import pwd
import threading
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

from snapkernel_engine import SnapshotStore
from snapkernel_engine.fingerprint import digest, source_digest
from snapkernel_engine.store import VerifyMode

from . import env_names

_HASHING_CODE = threading.Lock()


def for_user(path: str | os.PathLike[str]) -> Path:
    """Fill '{username}' in a path with this server's user (JupyterHub's, else the login name)."""
    username = os.environ.get("JUPYTERHUB_USER") or getpass.getuser()
    return Path(str(path).replace("{username}", username)).expanduser()


def default_store_root() -> Path:
    """Return $SNAPKERNEL_STORE (with '{username}' filled in), else ``$JUPYTER_DATA_DIR/snapkernel``."""
    configured = os.environ.get(env_names.STORE)
    return for_user(configured) if configured else Path(jupyter_data_dir()) / "snapkernel"


def kernel_code_digest() -> str:
    """Hash of the kernel code a snapshot carries in memory: other code means a stale snapshot (hashed once)."""
    with _HASHING_CODE:  # kernels started at once wait for one hash of the code, not one each
        return _kernel_code_digest()


@lru_cache(maxsize=1)
def _kernel_code_digest() -> str:
    """The kernel code's hash, computed."""
    return source_digest("snapkernel_engine", "jupyter_snapkernel")


def open_store(
    root: str | os.PathLike[str] | None = None,
    verify: VerifyMode = "sha256",
    work_dir: str | os.PathLike[str] | None = None,
    shared: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    trusted_owners: Iterable[int] | None = None,
) -> SnapshotStore:
    """Return a snapshot store, keyed also on the snapkernel code that built the snapshots."""
    return SnapshotStore(
        root or default_store_root(),
        verify=verify,
        environment_extra={"snapkernel_sha256": kernel_code_digest()},
        work_dir=work_dir,
        shared=shared,
        cache_dir=cache_dir,
        trusted_owners=None if trusted_owners is None else set(trusted_owners),
    )


def owner_uids(names: Iterable[str]) -> set[int]:
    """The uids of the users an administrator named (a name with no account names no one)."""
    uids = set()
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            continue
    return uids


def reading_store(
    root: str | os.PathLike[str], own: SnapshotStore, verify: VerifyMode = "sha256", owners: Iterable[str] = ()
) -> SnapshotStore:
    """A read-only store (an admin's shared root) whose restores work and remember hashes in `own`, privately;
    trusted only when root, one of the named `owners`, or this user owns it."""
    return open_store(
        root,
        verify=verify,
        work_dir=own.work_dir,
        cache_dir=own.cache_dir / digest([str(Path(root).resolve())])[:16],
        trusted_owners={os.geteuid(), *owner_uids(owners)},
    )
