"""Checks of what snapshots need on this machine, each with a hint to fix what fails."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from .criu import MINIMUM_VERSION, criu_version, find_criu, rpc_client
from .errors import SnapshotError
from .gpu import CHECKPOINT_MIN_DRIVER, driver_has_checkpoint_api, inventory

Status = Literal["ok", "warn", "fail", "absent"]
CAP_SYS_ADMIN = 21
CAP_SYS_PTRACE = 19
CAP_CHECKPOINT_RESTORE = 40


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


def _run(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def check_criu_binary(explicit: str | None) -> Check:
    """CRIU is found and new enough."""
    try:
        binary = find_criu(explicit)
        version = criu_version(binary)
    except SnapshotError as error:
        return Check("criu", "fail", str(error), "run `make setup` or set $SNAPKERNEL_CRIU")
    text = ".".join(map(str, version))
    if version < MINIMUM_VERSION:
        return Check("criu", "fail", f"{binary} is CRIU {text}, older than 4.0", "run `make setup` to build CRIU 4.x")
    return Check("criu", "ok", f"{binary} (CRIU {text})")


def check_criu_kernel(explicit: str | None) -> Check:
    """`criu check` accepts this kernel."""
    try:
        binary = find_criu(explicit)
    except SnapshotError as error:
        return Check("criu check", "fail", str(error), "install CRIU first")
    result = _run([binary, "check"])
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        return Check("criu check", "ok", output.splitlines()[-1] if output else "passed")
    last = output.splitlines()[-3:] if output else ["no output"]
    return Check(
        "criu check",
        "fail",
        " | ".join(last),
        "run as root; see `criu check` output for the missing kernel feature",
    )


def check_pycriu(explicit: str | None) -> Check:
    """pycriu imports and gets an answer from `criu swrk`."""
    try:
        client = rpc_client(find_criu(explicit))
        client.check()
    except SnapshotError as error:
        return Check("pycriu", "fail", str(error), "run `make setup`")
    except Exception as error:  # pycriu raises plain exceptions for RPC failures
        return Check("pycriu", "fail", f"criu swrk did not answer: {error}", "run as root; check `criu check`")
    return Check("pycriu", "ok", "pycriu talks to criu swrk")


def _effective_capabilities() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_privileges() -> Check:
    """Running as root, or holding the capabilities CRIU needs."""
    if os.geteuid() == 0:
        return Check("privileges", "ok", "running as root")
    caps = _effective_capabilities()
    missing = [
        name
        for name, bit in (
            ("CAP_CHECKPOINT_RESTORE", CAP_CHECKPOINT_RESTORE),
            ("CAP_SYS_PTRACE", CAP_SYS_PTRACE),
            ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
        )
        if not caps & (1 << bit)
    ]
    if not missing:
        return Check("privileges", "ok", "CAP_CHECKPOINT_RESTORE, CAP_SYS_PTRACE and CAP_SYS_ADMIN held")
    return Check(
        "privileges",
        "fail",
        f"not root and missing {', '.join(missing)}",
        "run as root, or grant the capabilities (e.g. `setcap` on CRIU, or the container's securityContext)",
    )


def check_namespaces() -> Check:
    """New PID and mount namespaces with a fresh /proc can be created."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return Check("namespaces", "fail", "`unshare` not found", "install util-linux")
    result = _run([unshare, "--pid", "--mount", "--fork", "--mount-proc", "true"])
    if result.returncode != 0:
        return Check(
            "namespaces",
            "fail",
            result.stderr.strip() or "unshare failed",
            "needs CAP_SYS_ADMIN (root, or a privileged container)",
        )
    return Check("namespaces", "ok", "PID + mount namespaces usable")


def check_userfaultfd(explicit: str | None) -> Check:
    """userfaultfd is available (lazy restore; optional)."""
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


def run_checks(store_root: Path, criu_binary: str | None = None) -> list[Check]:
    """Run every check, in the order a person would fix them."""
    return [
        check_criu_binary(criu_binary),
        check_criu_kernel(criu_binary),
        check_pycriu(criu_binary),
        check_privileges(),
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
        check_privileges(),
        check_namespaces(),
        check_pycriu(criu_binary),
    ):
        if check.status != "ok":
            return f"{check.name}: {check.detail}" + (f" (fix: {check.fix})" if check.fix else "")
    return None


def cpu_snapshots_work(checks: list[Check]) -> bool:
    """Tell whether every required check passed."""
    return all(check.status == "ok" for check in checks if check.required)
