"""Checks of what snapshots need on this machine, each with a hint to fix what fails."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .criu import MINIMUM_VERSION, criu_version, find_criu
from .errors import SnapshotError
from .gpu import CHECKPOINT_MIN_DRIVER, driver_has_checkpoint_api, inventory
from .privileges import (
    Privileges,
    current,
    detect,
    in_user_namespace_command,
    namespace_error,
    restores_in_user_namespace,
)
from .restore import package_environment

Status = Literal["ok", "warn", "fail", "absent"]


@dataclass(frozen=True)
class Check:
    """The outcome of one check; `required` checks must pass for CPU snapshots to work."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True

    def to_dict(self) -> dict[str, object]:
        """Return the check as JSON-ready data."""
        return asdict(self)


def _run(
    command: list[str], timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, env=env)


def as_restores_run(command: list[str]) -> list[str]:
    """Run a CRIU command where restores run: as is for root, else in a user namespace with CRIU's
    capabilities and ``--unprivileged``."""
    if not restores_in_user_namespace():
        return command
    if command[0].endswith("criu"):
        command = [*command, "--unprivileged"]
    return [*in_user_namespace_command(), *command]


def check_criu_binary(explicit: str | None) -> Check:
    """CRIU is found and new enough."""
    try:
        binary = find_criu(explicit)
        version = criu_version(binary)
    except SnapshotError as error:
        return Check("criu", "fail", str(error), "run `jupyter snapkernel install-criu` or set $SNAPKERNEL_CRIU")
    text = ".".join(map(str, version))
    if version < MINIMUM_VERSION:
        fix = "run `jupyter snapkernel install-criu` to build CRIU 4.x"
        return Check("criu", "fail", f"{binary} is CRIU {text}, older than 4.0", fix)
    return Check("criu", "ok", f"{binary} (CRIU {text})")


def check_criu_kernel(explicit: str | None) -> Check:
    """`criu check` accepts this kernel."""
    try:
        binary = find_criu(explicit)
    except SnapshotError as error:
        return Check("criu check", "fail", str(error), "run `jupyter snapkernel install-criu`")
    result = _run(as_restores_run([binary, "check"]))
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return Check("criu check", "ok", "Looks good." if "Looks good" in output else output or "passed")
    last = output.splitlines()[-3:] if output else ["no output"]
    return Check(
        "criu check",
        "fail",
        " | ".join(last),
        f"see the output of `{binary} check` for the missing kernel feature",
    )


def check_pycriu(explicit: str | None) -> Check:
    """pycriu imports and gets an answer from `criu swrk`."""
    try:
        binary = find_criu(explicit)
    except SnapshotError as error:
        return Check("pycriu", "fail", str(error), "run `jupyter snapkernel install-criu`")
    # swrk writes its log into the images dir (default: the cwd, which may not be writable).
    probe = (
        "import shutil, tempfile\nfrom snapkernel_engine.criu import rpc_client\n"
        f"client = rpc_client({binary!r}, unprivileged={restores_in_user_namespace()})\n"
        "client.opts.images_dir = scratch = tempfile.mkdtemp()\nclient.opts.log_file = 'check.log'\n"
        "try:\n    client.check()\n"
        "finally:\n    shutil.rmtree(scratch)\n"
    )
    result = _run(as_restores_run([sys.executable, "-c", probe]), env=package_environment())
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        fix = (
            "run `jupyter snapkernel install-criu`" if "pycriu is not importable" in last else f"check `{binary} check`"
        )
        return Check("pycriu", "fail", f"criu swrk did not answer: {last}", fix)
    return Check("pycriu", "ok", "pycriu talks to criu swrk")


def check_mode(privileges: Privileges) -> Check:
    """The privilege mode snapshots run in (root, capability, user-namespace), or why they cannot."""
    if privileges.mode == "unavailable":
        return Check("mode", "fail", f"unavailable: {privileges.detail}", privileges.fix)
    limits = f"; limits: {'; '.join(privileges.limits)}" if privileges.limits else ""
    return Check("mode", "ok", f"{privileges.mode}: {privileges.detail}{limits}", privileges.fix)


def check_namespaces() -> Check:
    """The namespaces restores run in (user + PID + mount, or PID + mount as root) can be created."""
    error = namespace_error()
    kinds = "user + PID + mount" if restores_in_user_namespace() else "PID + mount"
    if error is not None:
        return Check("namespaces", "fail", f"cannot create {kinds} namespaces: {error}", "see the mode check")
    return Check("namespaces", "ok", f"{kinds} namespaces usable")


def check_userfaultfd(explicit: str | None) -> Check:
    """userfaultfd is available (lazy restore; optional)."""
    if restores_in_user_namespace():
        return Check("userfaultfd", "warn", "lazy restore needs root (CRIU disables userfaultfd with "
                     "--unprivileged)", required=False)  # fmt: skip
    try:
        binary = find_criu(explicit)
    except SnapshotError:
        return Check("userfaultfd", "warn", "cannot check without CRIU", required=False)
    result = _run([binary, "check", "--feature", "uffd-noncoop"])
    if result.returncode == 0:
        return Check("userfaultfd", "ok", "uffd-noncoop supported", required=False)
    return Check(
        "userfaultfd",
        "warn",
        "not supported (lazy restore unavailable)",
        "needs a kernel with userfaultfd",
        required=False,
    )


def check_store(root: Path) -> Check:
    """The store directory exists or can be created, is writable and private to this user."""
    from .store import SnapshotStore

    try:
        SnapshotStore(root).ensure_layout()
    except (OSError, SnapshotError) as error:
        return Check("store", "fail", f"{root}: {error}", "choose a writable store root owned by this user")
    if not os.access(root, os.W_OK):
        return Check("store", "fail", f"{root} is not writable", "fix its ownership or choose another root")
    mode = root.stat().st_mode & 0o777
    return Check("store", "ok", f"{root} (mode {mode:o}, writable)")


def check_gpu() -> Check:
    """NVIDIA GPUs, the driver, and the driver's checkpoint API (optional)."""
    found = inventory()
    if not found.gpus:
        return Check("gpu", "absent", found.absent_reason or "no NVIDIA GPU", required=False)
    names = ", ".join(str(gpu["name"]) for gpu in found.gpus)
    detail = f"{len(found.gpus)} x {names}; driver {found.driver_version}, CUDA {found.cuda_driver_version}"
    if found.driver_branch < CHECKPOINT_MIN_DRIVER or not driver_has_checkpoint_api():
        return Check(
            "gpu",
            "warn",
            f"{detail}; no CUDA checkpoint API",
            f"GPU snapshots need driver >= {CHECKPOINT_MIN_DRIVER}",
            required=False,
        )
    return Check("gpu", "ok", f"{detail}; CUDA checkpoint API present", required=False)


def run_checks(store_root: Path, criu_binary: str | None = None, privileges: Privileges | None = None) -> list[Check]:
    """Run every check, in the order a person would fix them."""
    return [
        check_criu_binary(criu_binary),
        check_criu_kernel(criu_binary),
        check_pycriu(criu_binary),
        check_mode(privileges or detect()),
        check_namespaces(),
        check_userfaultfd(criu_binary),
        check_store(store_root),
        check_gpu(),
    ]


@functools.lru_cache(maxsize=4)
def snapshot_blocker(criu_binary: str | None = None) -> str | None:
    """Say what keeps this process from taking or restoring snapshots, or None when nothing does."""
    for check in (
        check_criu_binary(criu_binary),
        check_mode(current()),
        check_pycriu(criu_binary),
    ):
        if check.status != "ok":
            return f"{check.name}: {check.detail}" + (f" (fix: {check.fix})" if check.fix else "")
    return None


def cpu_snapshots_work(checks: list[Check]) -> bool:
    """Tell whether every required check passed."""
    return all(check.status == "ok" for check in checks if check.required)
