"""The privilege mode snapshots run in for this user: root, capability, user-namespace or unavailable.

- ``root``: CRIU runs with every privilege; restores keep host credentials.
- ``capability``: the user may execute a criu copy holding only ``cap_checkpoint_restore`` (the
  machine-wide install restricts it to the ``snapkernel`` group); it dumps with ``--unprivileged``.
- ``user-namespace``: no grant at all; build kernels run in a user namespace of their own and
  CRIU dumps them from inside it, so it cannot read ``/proc/PID/map_files``.
- ``unavailable``: user namespaces cannot be created here (or the container forbids what CRIU
  needs); kernels start cold and the reason says what to change.

Every mode but root restores inside new user + PID + mount namespaces as the user.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["root", "capability", "user-namespace", "unavailable"]
CAP_CRIU_ENV_VAR = "SNAPKERNEL_CRIU_CAP"
CAP_CRIU_IN_PREFIX = Path("libexec") / "snapkernel" / "criu-cap"  # in an environment, relative to its prefix
SNAPKERNEL_GROUP = "snapkernel"
CAP_SETPCAP = 8
CAP_NET_ADMIN = 12
CAP_CHECKPOINT_RESTORE = 40
# What a non-root CRIU needs in its user namespace: checkpoint_restore, and setpcap so that its
# restorer may drop capabilities the dumped bounding set lacks.
AMBIENT_CAPS = "-all,+checkpoint_restore,+setpcap"
# With a network namespace of its own, the restore helper also brings up that namespace's loopback. The namespace
# belongs to the user namespace made with it, so net_admin reaches nothing else; the helper drops it before CRIU.
OWN_NETWORK_CAPS = AMBIENT_CAPS + ",+net_admin"
NAMESPACE_PROBE_TIMEOUT_S = 20.0
HARMLESS_PROC_MOUNTS = {"/proc/sys/fs/binfmt_misc"}
# Restored kernels run in a user namespace that maps only the user (so do build kernels in user-namespace mode).
SETUID_LIMIT = (
    "no setuid programs in restored kernels (sudo, su, ping, ...; in user-namespace mode not in setup cells "
    "either): they run in a user namespace that maps only your uid, so root-owned files show as uid 65534 "
    "(nobody) and setuid bits do not apply; run such programs in a terminal or a cold kernel"
)
# What an admin runs (as root) for the capability-holding criu of this installation: this environment's jupyter.
GRANT_COMMAND = f"{Path(sys.prefix) / 'bin' / 'jupyter'} snapkernel install-criu --grant-group {SNAPKERNEL_GROUP}"


@dataclass(frozen=True)
class Privileges:
    """The mode this process takes and restores snapshots in, why, and how to get more."""

    mode: Mode
    detail: str
    fix: str = ""
    dump_criu: str | None = None  # capability mode: the criu copy holding cap_checkpoint_restore

    @property
    def unprivileged(self) -> bool:
        """Whether CRIU runs with ``--unprivileged`` (every mode but root)."""
        return self.mode in ("capability", "user-namespace")

    @property
    def limits(self) -> list[str]:
        """What this mode cannot do, in words for a person."""
        found = []
        if self.unprivileged:
            found.append("no lazy restore (CRIU disables userfaultfd with --unprivileged)")
            found.append(SETUID_LIMIT)
        if self.mode == "user-namespace":
            found.append("no mappings of deleted files (CRIU cannot read /proc/PID/map_files without a grant)")
        return found

    def to_dict(self) -> dict[str, object]:
        """Return the mode as JSON-ready data."""
        return {"mode": self.mode, "detail": self.detail, "fix": self.fix, "limits": self.limits}


def restores_in_user_namespace() -> bool:
    """Whether restores (and the checks of them) run in a new user namespace: for every user but root."""
    return os.geteuid() != 0


def capability_criu() -> Path:
    """Where the capability-holding criu of this installation is: $SNAPKERNEL_CRIU_CAP or PREFIX/libexec."""
    configured = os.environ.get(CAP_CRIU_ENV_VAR)
    return Path(configured) if configured else Path(sys.prefix) / CAP_CRIU_IN_PREFIX


def file_capabilities(path: Path) -> int:
    """Return the permitted file capabilities of an executable as a bit mask (0 when it has none)."""
    try:
        raw = os.getxattr(path, "security.capability")
    except OSError:
        return 0
    # struct vfs_cap_data: magic, then (permitted, inheritable) for capabilities 0-31 and 32-63.
    words = [int.from_bytes(raw[offset : offset + 4], "little") for offset in range(0, len(raw) - len(raw) % 4, 4)]
    low = words[1] if len(words) > 1 else 0
    high = words[3] if len(words) > 3 else 0
    return low | (high << 32)


def _status_field(name: str) -> str:
    """Return a field of /proc/self/status ('' when absent)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def capability_set(field: str) -> int:
    """Return one of this process's capability sets (CapEff, CapAmb, CapBnd, …) as a bit mask."""
    return int(_status_field(field) or "0", 16)


def container_blockers() -> list[tuple[str, str]]:
    """Name what this process's sandbox forbids that CRIU needs, each with the relaxation that lifts it."""
    found = []
    if _status_field("Seccomp") not in ("", "0"):
        found.append(
            (
                "a seccomp filter is active: CRIU cannot suspend it to dump a process",
                "run the container with seccomp unconfined (podman/docker: --security-opt seccomp=unconfined; "
                "Kubernetes: seccompProfile: {type: Unconfined})",
            )
        )
    mount_points = [fields[4] for fields in map(str.split, Path("/proc/self/mountinfo").read_text().splitlines())]
    masked = [point for point in mount_points if point.startswith("/proc/") and point not in HARMLESS_PROC_MOUNTS]
    if masked:
        found.append(
            (
                f"/proc is masked ({', '.join(masked[:3])}{', …' if len(masked) > 3 else ''}): a fresh /proc cannot be "
                "mounted in a new PID namespace",
                "unmask /proc (podman: --security-opt unmask=/proc/*; docker: --security-opt systempaths=unconfined; "
                "Kubernetes: procMount: Unmasked with hostUsers: false)",
            )
        )
    return found


def namespace_error(timeout: float = NAMESPACE_PROBE_TIMEOUT_S) -> str | None:
    """Say why user + PID + mount namespaces with a fresh /proc cannot be made here, or None when they can."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return "`unshare` (util-linux) not found"
    user = ["--user", "--map-current-user"] if restores_in_user_namespace() else []
    command = [unshare, *user, "--pid", "--mount", "--fork", "--mount-proc", "true"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return "creating namespaces did not finish"
    if result.returncode != 0:
        return result.stderr.strip() or f"unshare exited with {result.returncode}"
    return None


def detect() -> Privileges:
    """Work out this process's mode from its uid, the capability-holding criu, and namespace support."""
    blockers = container_blockers()
    if blockers:
        reason, fix = blockers[0]
        return Privileges("unavailable", reason, fix)
    error = namespace_error()
    if error is not None:
        if os.geteuid() == 0:
            return Privileges(
                "unavailable",
                f"cannot create PID + mount namespaces: {error}",
                "run on a host or a privileged container",
            )
        return Privileges(
            "unavailable",
            f"cannot create user namespaces: {error}",
            "allow unprivileged user namespaces (sysctl user.max_user_namespaces > 0; in a container: "
            "seccomp unconfined and /proc unmasked), or run the server as root",
        )
    if os.geteuid() == 0:
        return Privileges("root", "running as root")
    if capability_set("CapAmb") & (1 << CAP_CHECKPOINT_RESTORE):
        # A container that added CHECKPOINT_RESTORE for a non-root user hands it over as ambient:
        # every criu this process runs holds it, no file capability needed.
        return Privileges("capability", "this process holds CAP_CHECKPOINT_RESTORE (ambient)", dump_criu=None)
    cap_criu = capability_criu()
    if cap_criu.is_file() and os.access(cap_criu, os.X_OK):
        if not file_capabilities(cap_criu) & (1 << CAP_CHECKPOINT_RESTORE):
            note = f"{cap_criu} lacks cap_checkpoint_restore (an admin runs `{GRANT_COMMAND}` again)"
        elif _status_field("NoNewPrivs") == "1":
            note = "no_new_privs is set, so file capabilities do not apply (allowPrivilegeEscalation: true)"
        elif not capability_set("CapBnd") & (1 << CAP_CHECKPOINT_RESTORE):
            note = "CAP_CHECKPOINT_RESTORE is not in the bounding set (container: --cap-add CHECKPOINT_RESTORE)"
        else:
            return Privileges("capability", f"{cap_criu} holds cap_checkpoint_restore", dump_criu=str(cap_criu))
    elif cap_criu.is_file():
        note = f"not in group {SNAPKERNEL_GROUP!r}, which may run {cap_criu}"
    else:
        note = f"no capability-holding criu at {cap_criu}"
    return Privileges(
        "user-namespace",
        f"no grant ({note}): build kernels run in a user namespace of their own",
        f"for capability mode an admin runs `{GRANT_COMMAND}` and adds the user to group {SNAPKERNEL_GROUP!r}",
    )


@functools.lru_cache(maxsize=1)
def current() -> Privileges:
    """This process's mode, worked out once."""
    return detect()


def in_user_namespace_command(*, net: bool = False) -> list[str]:
    """The command prefix that runs a program in new user + PID + mount namespaces with CRIU's capabilities (and,
    with `net`, in a network namespace of its own, with the capability to bring up its loopback)."""
    unshare = shutil.which("unshare") or "unshare"
    setpriv = shutil.which("setpriv") or "setpriv"
    caps = OWN_NETWORK_CAPS if net else AMBIENT_CAPS
    return [
        unshare, "--user", "--map-current-user", "--keep-caps", "--pid", "--mount", *(["--net"] if net else []),
        "--fork", "--mount-proc", "--kill-child",
        setpriv, f"--inh-caps={caps}", f"--ambient-caps={caps}",
    ]  # fmt: skip


def own_user_namespace_command() -> list[str]:
    """The command prefix that runs a build kernel in a user namespace of its own (user-namespace mode)."""
    return [shutil.which("unshare") or "unshare", "--user", "--map-current-user"]
