"""Checkpoint a running process tree into an images directory with CRIU."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import process
from .criu import find_criu, log_excerpt, require_supported, rpc_client
from .cuda import (
    DEFAULT_LOCK_TIMEOUT_MS,
    CudaDriver,
    CudaError,
    cuda_processes,
    gpu_state_in_host_memory,
    system_driver,
    uses_nvidia_devices,
)
from .errors import CheckpointError
from .inputs import fingerprint_held_files
from .privileges import GRANT_COMMAND, SNAPKERNEL_GROUP, Privileges, current
from .stages import StageClock
from .userns_exec import write_launcher

DUMP_LOG = "dump.log"
# Memory the kernel names like files but that CRIU dumps without /proc/PID/map_files.
ANONYMOUS_FILES = ("/memfd:", "/SYSV", "/dev/zero")


@dataclass(frozen=True)
class DumpResult:
    """What a successful dump recorded about the process tree."""

    pid: int
    rss_bytes: int
    duration_s: float
    criu_version: str
    pipes: dict[str, str] = field(default_factory=dict)
    cuda_pids: list[int] = field(default_factory=list)
    held_files: dict[str, Any] = field(default_factory=dict)  # what the restore reopens by path


def pipe_keys(pid: int, pipes: Mapping[str, int]) -> dict[str, str]:
    """Map names of the root's pipe fds to CRIU's keys for them (``pipe:[INODE]``)."""
    keys: dict[str, str] = {}
    for name, fd in pipes.items():
        try:
            target = process.fd_target(pid, fd)
        except OSError as error:
            raise CheckpointError(f"process {pid} has no fd {fd} ({name!r}): {error}") from error
        if not target.startswith("pipe:["):
            raise CheckpointError(
                f"fd {fd} ({name!r}) of process {pid} is {target}, not a pipe: only pipes can be replaced at restore"
            )
        keys[name] = target
    return keys


def _refuse_what_restores_cannot_recreate(members: list[int]) -> None:
    """Refuse, before CRIU runs, a tree holding what no restore can bring back as it was: pools of the
    'spawn' or 'forkserver' start methods, files open for writing, and sockets with an address."""
    _refuse_multiprocessing_start_methods(members)
    _refuse_files_open_for_writing(members)
    _refuse_addressed_sockets(members)


def _refuse_multiprocessing_start_methods(members: list[int]) -> None:
    """Refuse processes and named semaphores of multiprocessing's 'spawn' and 'forkserver' start methods:
    every restore would share the semaphores, and CRIU cannot dump them ("Use link-remap option")."""
    fix = (
        "Use multiprocessing.get_context('fork') in the setup cells, or create the pool after them "
        "(or in an after_restore hook)"
    )
    for member in members:
        method = process.multiprocessing_start_method(member)
        if method is not None:
            raise CheckpointError(
                f"process {member} was started by multiprocessing's {method!r} start method (a Pool or Process of "
                f"the setup cells): its named semaphores would be shared by every restored kernel, and CRIU cannot "
                f"dump them. {fix}"
            )
    for member in members:
        semaphores = process.linked_semaphores_mapped(member)
        if semaphores:
            raise CheckpointError(
                f"process {member} holds the multiprocessing semaphore {semaphores[0]} (a Pool, Queue or Lock made "
                f"with the 'spawn' or 'forkserver' start method): every restored kernel would share it, and CRIU "
                f"cannot dump it. {fix}"
            )


def _refuse_files_open_for_writing(members: list[int]) -> None:
    """Refuse a tree holding regular files open for writing: a restore fails once such a file changes size."""
    for member in members:
        writable = process.files_open_for_writing(member)
        if writable:
            raise CheckpointError(
                f"process {member} holds {', '.join(writable)} open for writing: CRIU restores an open file only at "
                "the size it had at the snapshot, so every restore would fail once it grows. Close it before the "
                "snapshot (in a before_snapshot hook) or open it after the setup cells"
            )


def _refuse_addressed_sockets(members: list[int]) -> None:
    """Refuse sockets that listen, hold an address or a connection: a restore would take the address over
    from the kernel holding it (CRIU binds listening TCP ports by force), or cannot resume the connection."""
    for member in members:
        # CUDA binds an abstract unix socket per process: a second live restore collides and starts cold.
        on_gpu = uses_nvidia_devices(member)
        for found in process.addressed_sockets(member):
            if found.abstract and on_gpu:
                continue
            why = (
                "a restore cannot resume a connection"
                if found.remote
                else "every restored kernel would try to take that address over from the kernel holding it"
            )
            raise CheckpointError(
                f"process {member} {found.describe()}: {why}. Close it before the snapshot (in a before_snapshot "
                "hook) and open it again in an after_restore hook, or open it after the setup cells"
            )


def _refuse_user_namespace_limits(pid: int, members: list[int]) -> None:
    """Refuse, before CRIU runs, what user-namespace mode cannot dump: trees outside their own user
    namespace and mappings of deleted files."""
    if os.readlink(f"/proc/{pid}/ns/user") == os.readlink("/proc/self/ns/user"):
        raise CheckpointError(
            f"process {pid} shares this process's user namespace: in user-namespace mode the process to dump must "
            "run in a user namespace of its own (snapkernel_engine.privileges.own_user_namespace_command)"
        )
    for member in members:
        try:
            maps = Path(f"/proc/{member}/maps").read_text()
        except OSError:
            continue
        deleted = sorted(
            {
                line.split(None, 5)[5]
                for line in maps.splitlines()
                if line.endswith(" (deleted)") and not line.split(None, 5)[5].startswith(ANONYMOUS_FILES)
            }
        )
        if deleted:
            raise CheckpointError(
                f"process {member} maps a deleted file ({deleted[0]}): in user-namespace mode CRIU cannot read "
                "/proc/PID/map_files, so such mappings cannot be dumped. Keep the file until the snapshot is taken, "
                f"or get capability mode (an admin runs `{GRANT_COMMAND}` and adds you to group {SNAPKERNEL_GROUP!r})"
            )


def dump_tree(
    pid: int,
    images_dir: Path,
    work_dir: Path,
    *,
    pipes: Mapping[str, int] | None = None,
    leave_running: bool = True,
    criu_binary: str | None = None,
    gpu_state: bool = True,
    cuda_driver: CudaDriver | None = None,
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS,
    privileges: Privileges | None = None,
    clock: StageClock | None = None,
) -> DumpResult:
    """Dump the process tree rooted at `pid` into `images_dir` (which must be empty).

    Processes of the tree that hold CUDA state have it moved into host memory first (and back
    afterwards when they keep running); `gpu_state` False refuses such trees instead.
    `cuda_driver` defaults to the machine's driver. `privileges` (default: this process's mode)
    decides which CRIU dumps and how: see snapkernel_engine.privileges. `clock` gets the dump's stages.
    """
    clock = clock or StageClock()
    privileges = privileges or current()
    binary = find_criu(criu_binary)
    version = require_supported(binary)
    _refuse_undumpable_root(pid, privileges)
    keys = pipe_keys(pid, pipes or {})
    members = process.tree(pid)
    _refuse_what_restores_cannot_recreate(members)
    if privileges.mode == "user-namespace":
        _refuse_user_namespace_limits(pid, members)
    driver, cuda_pids = _gpu_state_to_move(members, cuda_driver, gpu_state)
    held_files = fingerprint_held_files(members)
    images_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if privileges.mode == "capability" and privileges.dump_criu:
        binary = privileges.dump_criu
    elif privileges.mode == "user-namespace":
        binary = str(write_launcher(work_dir / "criu-in-userns", pid, binary))
    nested = privileges.mode != "user-namespace" and in_nested_pid_namespace(pid)
    if nested:  # a restored tree: CRIU dumps it from inside its PID and mount namespaces
        binary = str(write_nsenter_launcher(work_dir / "criu-in-pidns", pid, binary))
    client = rpc_client(binary, unprivileged=privileges.unprivileged)
    client.opts.pid = process.innermost_pid(pid) if nested else pid
    client.opts.images_dir = str(images_dir)
    client.opts.leave_running = leave_running
    client.opts.log_file = DUMP_LOG
    # A CRIU in other namespaces cannot open our fds through /proc: it logs into the images folder.
    criu_elsewhere = privileges.mode == "user-namespace" or nested
    clock.lap("prepare")
    with _gpu_state_in_host_memory(driver, cuda_pids, lock_timeout_ms, leave_running):
        clock.lap("gpu_to_host")
        # Measured with the GPU state in host memory: what a restored copy holds until that state goes back.
        rss = process.tree_rss_bytes(pid)
        clock.lap("prepare")
        duration = _run_dump(client, pid, images_dir, work_dir, criu_elsewhere)
        clock.lap("criu_dump")
    clock.lap("gpu_back")
    return DumpResult(
        pid=pid,
        rss_bytes=rss,
        duration_s=duration,
        criu_version=".".join(map(str, version)),
        pipes=keys,
        cuda_pids=cuda_pids,
        held_files=held_files,
    )


def in_nested_pid_namespace(pid: int) -> bool:
    """Whether a process lives in a PID namespace below this process's (a restored tree does)."""
    return os.readlink(f"/proc/{pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def write_nsenter_launcher(path: Path, target_pid: int, binary: str) -> Path:
    """Write an executable that runs `binary` in the PID and mount namespaces of `target_pid` (nsenter forks
    into the PID namespace and waits): there CRIU sees the tree as a plain tree of its own namespace."""
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise CheckpointError("`nsenter` (util-linux) is required to dump a restored process tree")
    path.write_text(f'#!/bin/sh\nexec {nsenter} --target {target_pid} --pid --mount -- {binary} "$@"\n')
    os.chmod(path, 0o700)
    return path


def _refuse_undumpable_root(pid: int, privileges: Privileges) -> None:
    """Refuse, before anything is written, a dump this mode cannot make or a root CRIU cannot dump."""
    if privileges.mode == "unavailable":
        raise CheckpointError(f"snapshots are unavailable here: {privileges.detail} (fix: {privileges.fix})")
    if not process.is_alive(pid):
        raise CheckpointError(f"process {pid} does not exist")
    if os.getsid(pid) != pid:
        raise CheckpointError(
            f"process {pid} is not a session leader: CRIU can only dump a tree whose root "
            "started its own session (start it with setsid / start_new_session=True)"
        )


def _gpu_state_to_move(
    members: list[int], cuda_driver: CudaDriver | None, gpu_state: bool
) -> tuple[CudaDriver | None, list[int]]:
    """The CUDA driver and the members whose GPU state the dump moves to host memory; refuse a tree on the GPU
    that this machine's driver cannot checkpoint, or whose GPU state this snapshot excludes."""
    driver = cuda_driver if cuda_driver is not None else system_driver()
    if driver is None:
        on_gpu = [member for member in members if uses_nvidia_devices(member)]
        if on_gpu:
            raise CheckpointError(
                f"process {on_gpu[0]} uses the GPU, but this machine's NVIDIA driver has no CUDA checkpoint "
                "API (driver >= 570 needed)"
            )
        return None, []
    cuda_pids = cuda_processes(driver, members)
    if cuda_pids and not gpu_state:
        raise CheckpointError(
            f"process {cuda_pids[0]} has initialised CUDA, but GPU state is excluded from this snapshot: "
            "do not use the GPU before the snapshot (e.g. no torch.cuda or .to('cuda') in the setup cells), "
            "or include GPU state"
        )
    return driver, cuda_pids


@contextmanager
def _gpu_state_in_host_memory(
    driver: CudaDriver | None, cuda_pids: list[int], lock_timeout_ms: int, resume: bool
) -> Iterator[None]:
    """Hold the tree's GPU state in host memory during the dump; one CheckpointError if it cannot move."""
    try:
        with gpu_state_in_host_memory(driver, cuda_pids, lock_timeout_ms=lock_timeout_ms, resume=resume):
            yield
    except CudaError as error:
        raise CheckpointError(f"could not move the GPU state of process {error.pid} to host memory: {error}") from error


def _run_dump(client: Any, pid: int, images_dir: Path, work_dir: Path, criu_elsewhere: bool) -> float:
    """Run CRIU's dump through its RPC client; return how long it took, or raise with its log's excerpt."""
    # A CRIU inside the kernel's user or PID namespace cannot open our fds through /proc (no CAP_SYS_PTRACE
    # in our namespace, or another /proc): it logs into the images dir, and the log is moved to the work dir.
    work_fd = os.open(work_dir, os.O_DIRECTORY)
    try:
        if not criu_elsewhere:
            client.opts.work_dir_fd = work_fd
        started = time.perf_counter()
        try:
            client.dump()
        except Exception as error:
            raise CheckpointError(
                f"CRIU refused to dump process {pid}: {error}", log_excerpt(work_dir / DUMP_LOG)
            ) from error
        return time.perf_counter() - started
    finally:
        os.close(work_fd)
        if criu_elsewhere and (images_dir / DUMP_LOG).exists():
            os.replace(images_dir / DUMP_LOG, work_dir / DUMP_LOG)
