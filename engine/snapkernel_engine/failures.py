"""Why a restore failed, and what that means for its snapshot: try it again, rebuild it, or give it up."""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from typing import Literal

from .errors import CriuUnavailable, RestoreTimeout, SnapshotBusy, SnapshotError, SnapshotNotFound, StoreError

# transient: the next start tries the same snapshot again; stale: an input of the snapshot changed, so a
# rebuild fixes it; unusable: it would fail the same way however often it is tried or rebuilt.
FailureKind = Literal["transient", "stale", "unusable"]

OUT_OF_MEMORY_MARK = "out of memory"  # restore_tree says so when the memory cgroup's OOM killer acted
OUT_OF_MEMORY = (OUT_OF_MEMORY_MARK, "Out of memory", "Cannot allocate memory", "ENOMEM", "[Errno 12]")
KILLED = ("killed by signal", "restore helper exited early")
# criu swrk went away mid-request: the binary was replaced (an upgrade) or killed.
CRIU_CHANGED = ("[Errno 104]", "Connection reset by peer", "[Errno 32]", "Broken pipe", "criu: not found")
BUSY = ("Resource temporarily unavailable", "Device or resource busy", "[Errno 11]", "[Errno 16]")
TRANSIENT_ERRNOS = {errno.ENOMEM, errno.ECONNRESET, errno.EPIPE, errno.EAGAIN, errno.EBUSY, errno.ETIMEDOUT}
# CRIU reopens the files the process had open or mapped, and the process's folders, by path.
CHANGED_FILE = re.compile(r"File (\S+) has bad (size|mode|build-ID)")
MISSING_FILE = re.compile(r"Can't open (?:file|cwd|root) (\S+?):? ")


@dataclass(frozen=True)
class RestoreFailure:
    """What a failed restore says about its snapshot."""

    kind: FailureKind
    cause: str  # one line, for people: "out of memory", "/data/libfoo.so changed since the snapshot"

    @property
    def verdict(self) -> str:
        """What happens next, for the cold start's reason."""
        if self.kind == "transient":
            return f"{self.cause}; the next start tries this snapshot again"
        if self.kind == "stale":
            return f"{self.cause}; the snapshot is stale and is rebuilt"
        return f"{self.cause}; the snapshot is not offered again"

    def reason(self, snapshot_id: str, error: BaseException) -> str:
        """The cold start's reason: the verdict, then the error itself unless the cause already quotes it."""
        text = str(error)
        if text.splitlines()[:1] == [self.cause]:
            return f"restore of snapshot {snapshot_id} failed: {self.verdict}"
        return f"restore of snapshot {snapshot_id} failed ({self.verdict}): {text}"


def _file_cause(text: str) -> str | None:
    """Name the file whose change made CRIU fail, from its log lines (None: not such a failure)."""
    changed = CHANGED_FILE.search(text)
    if changed:
        return f"/{changed.group(1).lstrip('/')} changed since the snapshot (its {changed.group(2)} differs)"
    missing = MISSING_FILE.search(text)
    if missing:
        return f"/{missing.group(1).lstrip('/')} moved or was removed since the snapshot"
    return None


def classify_restore_failure(error: BaseException) -> RestoreFailure:
    """Sort a restore failure by cause: transient (try again), stale (rebuild once) or unusable (give up)."""
    text = str(error)
    if isinstance(error, RestoreTimeout | TimeoutError):
        return RestoreFailure("transient", "the restore timed out (the machine may have been busy)")
    if isinstance(error, SnapshotBusy | SnapshotNotFound | StoreError):  # the store's fault (read-only, full), not its
        return RestoreFailure("transient", text.splitlines()[0] if text else "the snapshot was busy")
    if any(mark in text for mark in OUT_OF_MEMORY) or getattr(error, "errno", None) == errno.ENOMEM:
        return RestoreFailure("transient", "out of memory")
    file_cause = _file_cause(text)
    if file_cause is not None:
        return RestoreFailure("stale", file_cause)
    if isinstance(error, CriuUnavailable) or any(mark in text for mark in CRIU_CHANGED):
        return RestoreFailure("transient", "CRIU changed or is missing (an upgrade in progress?)")
    if any(mark in text for mark in KILLED):
        return RestoreFailure("transient", "the restore was killed")
    if getattr(error, "errno", None) in TRANSIENT_ERRNOS or any(mark in text for mark in BUSY):
        return RestoreFailure("transient", "the machine was busy")
    if isinstance(error, SnapshotError):
        return RestoreFailure("unusable", text.splitlines()[0] if text else type(error).__name__)
    # Not the snapshot's fault (the restored kernel's hand-over, this process): nothing to learn about it.
    return RestoreFailure("transient", text.splitlines()[0] if text else type(error).__name__)
