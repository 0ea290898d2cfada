"""Restore failures sorted by cause, from the errors and CRIU log lines seen on real machines."""

from __future__ import annotations

import errno

import pytest

from snapkernel_engine.errors import (
    CriuUnavailable,
    RestoreError,
    RestoreTimeout,
    SnapshotBusy,
    SnapshotNotFound,
    StoreError,
    VerificationError,
)
from snapkernel_engine.failures import RestoreFailure, classify_restore_failure

CRIU_FAILED = "CRIU could not restore /store/snapshots/abc/images: RESTORE failed: Error(0): Unknown"


def criu_error(*log_lines: str) -> RestoreError:
    """A RestoreError as restore_tree raises it, with CRIU's log excerpt."""
    return RestoreError(CRIU_FAILED, "CRIU log:\n" + "\n".join(f"  {line}" for line in log_lines))


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (
            criu_error("Error (criu/cr-restore.c:1269): 11022 killed by signal 9: Killed"),
            "the restore was killed",
        ),
        (
            RestoreError(f"out of memory: the memory cgroup's OOM killer ended the restore; {CRIU_FAILED}"),
            "out of memory",
        ),
        (criu_error("Error (criu/mem.c:900): Can't mmap: Cannot allocate memory"), "out of memory"),
        (OSError(errno.ENOMEM, "Cannot allocate memory"), "out of memory"),
        (
            RestoreTimeout("restore did not finish within 120 s"),
            "the restore timed out (the machine may have been busy)",
        ),
        (TimeoutError(), "the restore timed out (the machine may have been busy)"),
        (
            RestoreError("CRIU could not restore /s/images: [Errno 104] Connection reset by peer"),
            "CRIU changed or is missing (an upgrade in progress?)",
        ),
        (
            ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"),
            "CRIU changed or is missing (an upgrade in progress?)",
        ),
        (
            CriuUnavailable("CRIU not found: run `jupyter snapkernel install-criu`"),
            "CRIU changed or is missing (an upgrade in progress?)",
        ),
        (RestoreError("CRIU could not restore /s/images: restore helper exited early"), "the restore was killed"),
        (criu_error("Error (criu/pie/restorer.c:1): clone: Resource temporarily unavailable"), "the machine was busy"),
        (
            SnapshotBusy("snapshot abc is being restored; try again later"),
            "snapshot abc is being restored; try again later",
        ),
        (SnapshotNotFound("snapshot 'abc' was deleted"), "snapshot 'abc' was deleted"),
        (
            StoreError("a restore cannot create its work folder in the snapshot store (Read-only file system): …"),
            "a restore cannot create its work folder in the snapshot store (Read-only file system): …",
        ),
        (RuntimeError("unexpected reply {'event': 'gone'}"), "unexpected reply {'event': 'gone'}"),
    ],
)
def test_failures_that_may_not_recur_are_transient(error: BaseException, cause: str) -> None:
    failure = classify_restore_failure(error)
    assert (failure.kind, failure.cause) == ("transient", cause)
    assert "tries this snapshot again" in failure.verdict


@pytest.mark.parametrize(
    ("log_line", "cause"),
    [
        (
            "24421: Error (criu/files-reg.c:2353): Can't open file tmp/fx/plain on restore: No such file or directory",
            "/tmp/fx/plain moved or was removed since the snapshot",
        ),
        (
            "11349: Error (criu/files-reg.c:2267): Can't open file home/a/proj/libfoo.so: No such file or directory",
            "/home/a/proj/libfoo.so moved or was removed since the snapshot",
        ),
        (
            "Error (criu/files-reg.c:2091): File home/a/proj/libfoo.so has bad size 16048 (expect 15960)",
            "/home/a/proj/libfoo.so changed since the snapshot (its size differs)",
        ),
        (
            "Error (criu/files-reg.c:2113): File home/a/work has bad mode 041755 (expect 040755)",
            "/home/a/work changed since the snapshot (its mode differs)",
        ),
        (
            "Error (criu/files-reg.c:1700): File usr/lib/libm.so.6 has bad build-ID",
            "/usr/lib/libm.so.6 changed since the snapshot (its build-ID differs)",
        ),
    ],
)
def test_a_changed_or_moved_file_makes_the_snapshot_stale(log_line: str, cause: str) -> None:
    failure = classify_restore_failure(criu_error(log_line, "Error (criu/cr-restore.c:2331): Restoring FAILED."))
    assert (failure.kind, failure.cause) == ("stale", cause)
    assert failure.verdict.endswith("the snapshot is stale and is rebuilt")


def test_an_out_of_memory_kill_wins_over_the_files_it_interrupted() -> None:
    killed = criu_error("Error (criu/files-reg.c:2267): Can't open file data/a.bin: Cannot allocate memory")
    error = RestoreError(f"out of memory: the memory cgroup's OOM killer ended the restore; {killed}")
    assert classify_restore_failure(error) == RestoreFailure("transient", "out of memory")


@pytest.mark.parametrize(
    "error",
    [
        criu_error("Error (criu/cr-restore.c:999): Unexpected tty state"),
        VerificationError("snapshot abc: images/pages-1.img is corrupted (sha256 0123…, expected 4567…)"),
    ],
)
def test_other_snapshot_failures_make_it_unusable(error: BaseException) -> None:
    failure = classify_restore_failure(error)
    assert failure.kind == "unusable"
    assert failure.cause == str(error).splitlines()[0]


def test_a_reason_quotes_the_error_once() -> None:
    """The cold start's reason gives the error itself only where the cause does not already quote it."""
    busy = SnapshotBusy("snapshot abc is being restored; try again later")
    assert classify_restore_failure(busy).reason("abc", busy) == (
        "restore of snapshot abc failed: snapshot abc is being restored; try again later; "
        "the next start tries this snapshot again"
    )
    oom = RestoreError("CRIU could not restore /s/images: Cannot allocate memory")
    assert classify_restore_failure(oom).reason("abc", oom) == (
        "restore of snapshot abc failed (out of memory; the next start tries this snapshot again): "
        "CRIU could not restore /s/images: Cannot allocate memory"
    )
