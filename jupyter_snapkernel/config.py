"""Settings an administrator sets for every user: in jupyter_server_config.py, on the command line,
or through SNAPKERNEL_* environment variables (e.g. from ``c.Spawner.environment``)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from traitlets import Bool, Enum, Float, HasTraits, Int, List, Unicode, default
from traitlets.config import LoggingConfigurable
from traitlets.traitlets import DefaultHandler

from snapkernel_engine.store import VerifyMode

from . import env_names
from .paths import default_store_root, for_user

FALSE_WORDS = {"0", "false", "no", "off"}
PROVISIONER_NAME = "snapkernel-provisioner"  # its entry point in pyproject.toml
VERIFY_MODES: list[VerifyMode] = ["sha256", "size"]  # typed, so that `SnapKernelSettings.verify` is a VerifyMode
RESTORE_NETWORKS = ["auto", "own", "host"]  # SnapKernelSettings.restore_network (launch/network.py decides by it)
DEFAULT_BUILD_TIMEOUT_S = 600.0  # how long a snapshot build may take, unless configured
DEFAULT_RESTORE_POINT_S = 1.0  # a setup cell this long gets a restore point after it, unless configured
DEFAULT_SPARE_MEMORY_BYTES = 2 * 2**30  # what a server's spare kernels may hold together, unless configured
DEFAULT_SPARE_IDLE_S = 600.0  # how long a spare outlives its notebook's last session, unless configured


def is_on(value: str) -> bool:
    """An on/off word: anything but 0/false/no/off is on."""
    return value.strip().lower() not in FALSE_WORDS


def env_flag(name: str, fallback: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """Read an on/off environment variable (of `environ`: a launch's own, say); unset or empty leaves
    `fallback`: the one reading of every SNAPKERNEL_* switch."""
    value = environ.get(name, "").strip()
    return is_on(value) if value else fallback


def path_list(value: str) -> list[str]:
    """A list of paths or names separated by commas or colons."""
    return [item for item in value.replace(":", ",").split(",") if item]


def comma_list(value: str) -> list[str]:
    """A list separated by commas only (registry references hold colons)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def env_default(trait: str, variable: str, parse: Callable[[str], Any], fallback: Any) -> DefaultHandler:
    """A trait's default read from environment variable `variable` with `parse`; unset or empty: `fallback`."""

    def read(_owner: HasTraits) -> Any:
        value = os.environ.get(variable, "").strip()
        return parse(value) if value else fallback

    return default(trait)(read)


class SnapKernelSettings(LoggingConfigurable):
    """snapkernel's settings (``c.SnapKernelSettings.*``)."""

    enabled = Bool(help="Restore kernels from snapshots and build snapshots. Off: every kernel starts cold.").tag(
        config=True
    )
    store_root = Unicode(
        help="Directory of this user's snapshots; '{username}' is replaced by the user's name "
        "(default: $SNAPKERNEL_STORE, else $JUPYTER_DATA_DIR/snapkernel).",
    ).tag(config=True)
    shared_roots = List(
        Unicode(),
        help="Read-only snapshot stores that administrators prepared for all users (a course image's setup, "
        "say), searched after the user's own store ($SNAPKERNEL_SHARED_ROOTS, comma separated).",
    ).tag(config=True)
    shared_root_owners = List(
        Unicode(),
        help="User names, besides root, who may own the shared roots and the snapshots in them. A shared root "
        "owned by anyone else is refused: its owner could run code as every user who restores from it "
        "($SNAPKERNEL_SHARED_ROOT_OWNERS, comma separated).",
    ).tag(config=True)
    quota_bytes = Int(
        0,
        help="Most bytes of snapshots a user keeps, restore points included; the least recently used go first, "
        "the ends of chains of restore points before the points they need (0: no limit).",
    ).tag(config=True)
    max_snapshots = Int(
        0,
        help="Most snapshots a user keeps, a snapshot with its restore points counting as one; the least "
        "recently used go first (0: no limit).",
    ).tag(config=True)
    restore_point_seconds = Float(
        min=0.0,
        help="A build leaves a restore point after each setup cell that ran at least this many seconds (and after "
        "each cell tagged `snapshot`), so that an edit of a later setup cell runs only the cells from it on "
        "(0: restore points at tagged cells only). GPU setups get them at tagged cells only: each costs a CUDA "
        "checkpoint ($SNAPKERNEL_RESTORE_POINT_SECONDS, default 1).",
    ).tag(config=True)
    max_concurrent_builds = Int(
        help="Most snapshot builds a server runs at once (each runs a kernel); later requests wait in its queue "
        "($SNAPKERNEL_MAX_CONCURRENT_BUILDS, default 1).",
        min=1,
    ).tag(config=True)
    max_queued_builds = Int(
        help="Most snapshot builds that wait in a server's queue; a build request past it is refused with "
        "HTTP 429 and an automatic build is skipped ($SNAPKERNEL_MAX_QUEUED_BUILDS, default 8).",
        min=0,
    ).tag(config=True)
    auto_build = Bool(
        help="Start a background snapshot build when a notebook with a setup section gets a cold kernel."
    ).tag(config=True)
    allowed_kernelspecs = List(
        Unicode(),
        ["snapkernel", "snapkernel-*"],
        help="Kernelspecs whose kernels may be restored from snapshots: names, or shell-style patterns "
        "(`jupyter snapkernel kernelspec install` names the kernelspecs it binds to notebooks snapkernel-*).",
    ).tag(config=True)
    verify = Enum(VERIFY_MODES, help="How image files are checked before a restore: full sha256, or sizes only.").tag(
        config=True
    )
    build_timeout = Float(help="Seconds a snapshot build may take before it is abandoned.").tag(config=True)
    restore_timeout = Float(60.0, help="Seconds a restore may take before the kernel starts cold instead.").tag(
        config=True
    )
    lazy_restore = Bool(
        False,
        help="Resume restored kernels before their memory is copied in (userfaultfd): pages load in the "
        "background and on first touch. Faster when the setup's memory is touched little at first; slower "
        "when the first cells touch most of it.",
    ).tag(config=True)
    gpu_state = Bool(
        help="Include GPU (CUDA) state in snapshots. Off: a setup that initialised CUDA fails to build, with "
        "that reason. A notebook can turn it off for itself with metadata {'snapkernel': {'gpu_state': false}}.",
    ).tag(config=True)
    restore_network = Enum(
        RESTORE_NETWORKS,
        help="Which network restored kernels run in. 'auto': a network namespace of their own for GPU snapshots "
        "(CUDA binds an abstract unix socket named after the process's PID, which every restored copy keeps, so "
        "two live copies in one network collide), the host's network for the others (kernels need it: downloads, "
        "APIs, databases). 'own': every restore gets its own namespace, with only a loopback of its own. 'host': "
        "none does (a second live kernel of a GPU snapshot then starts cold). A kernel in its own namespace is "
        "handed an ipc connection (unix sockets in a private folder) instead of TCP ($SNAPKERNEL_RESTORE_NETWORK, "
        "default auto).",
    ).tag(config=True)
    registries = List(
        Unicode(),
        help="OCI repositories (HOST[:PORT]/PATH) that may hold snapshots for these users, asked in order when no "
        "local or shared snapshot matches a notebook; a match is fetched into the user's store (in the "
        "foreground when its expected pull time is shorter than the setup it saves, else in the background for "
        "the next start). Whoever can push to a listed repository runs code as every user who pulls from it: "
        "list only repositories whose pushers you trust as you trust course builders. Plain HTTP only for a "
        "registry on the loopback address (http://127.0.0.1:PORT/PATH) ($SNAPKERNEL_REGISTRIES, comma separated).",
    ).tag(config=True)
    push_on_build = Bool(
        help="Push every snapshot a build publishes to the first of `registries`, for course builders whose "
        "nodes pull it ($SNAPKERNEL_PUSH_ON_BUILD, default off).",
    ).tag(config=True)
    spare_kernels = Bool(
        help="Keep one kernel restored ahead of time for each snapshot in use, so that the next start of that "
        "notebook (another session, a restart) only hands it a connection. Costs the memory of one idle "
        "kernel per notebook in use.",
    ).tag(config=True)

    spare_memory_bytes = Int(
        min=0,
        help="Most memory the spare kernels of this server hold together, counted as each snapshot's resident "
        "memory at its dump; the least recently used spare is retired first to make room (0: no limit).",
    ).tag(config=True)
    spare_idle_seconds = Float(
        min=0.0,
        help="Seconds after the last session of a notebook closed before its spare kernel is retired "
        "(0: kept while the server runs).",
    ).tag(config=True)

    @default("store_root")
    def _store_root_default(self) -> str:
        return str(default_store_root())

    _enabled_default = env_default("enabled", env_names.ENABLED, is_on, True)
    _shared_roots_default = env_default("shared_roots", env_names.SHARED_ROOTS, path_list, [])
    _shared_root_owners_default = env_default("shared_root_owners", env_names.SHARED_ROOT_OWNERS, path_list, [])
    _auto_build_default = env_default("auto_build", env_names.AUTO_BUILD, is_on, True)
    _verify_default = env_default("verify", env_names.VERIFY, str, "sha256")
    _build_timeout_default = env_default("build_timeout", env_names.BUILD_TIMEOUT, float, DEFAULT_BUILD_TIMEOUT_S)
    _restore_point_seconds_default = env_default(
        "restore_point_seconds", env_names.RESTORE_POINT_SECONDS, float, DEFAULT_RESTORE_POINT_S
    )
    _gpu_state_default = env_default("gpu_state", env_names.GPU_STATE, is_on, True)
    _restore_network_default = env_default("restore_network", env_names.RESTORE_NETWORK, str.lower, "auto")
    _registries_default = env_default("registries", env_names.REGISTRIES, comma_list, [])
    _push_on_build_default = env_default("push_on_build", env_names.PUSH_ON_BUILD, is_on, False)
    _spare_kernels_default = env_default("spare_kernels", env_names.SPARE_KERNELS, is_on, True)
    _spare_memory_bytes_default = env_default(
        "spare_memory_bytes", env_names.SPARE_MEMORY_BYTES, int, DEFAULT_SPARE_MEMORY_BYTES
    )
    _spare_idle_seconds_default = env_default(
        "spare_idle_seconds", env_names.SPARE_IDLE_SECONDS, float, DEFAULT_SPARE_IDLE_S
    )
    _quota_bytes_default = env_default("quota_bytes", env_names.QUOTA_BYTES, int, 0)
    _max_snapshots_default = env_default("max_snapshots", env_names.MAX_SNAPSHOTS, int, 0)
    _max_concurrent_builds_default = env_default("max_concurrent_builds", env_names.MAX_CONCURRENT_BUILDS, int, 1)
    _max_queued_builds_default = env_default("max_queued_builds", env_names.MAX_QUEUED_BUILDS, int, 8)

    @property
    def user_store_root(self) -> Path:
        """The store root with '{username}' filled in."""
        return for_user(self.store_root)

    def allows_kernelspec(self, name: str) -> bool:
        """Whether kernels of kernelspec `name` may be restored (allowed_kernelspecs: names or patterns)."""
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.allowed_kernelspecs)
