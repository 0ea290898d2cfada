"""What `ps` shows for a kernel process of snapkernel: a build, a spare, or a kernel restored from a snapshot.

A build kernel starts as `python -m jupyter_snapkernel.kernel.app --snapshot-build …`, and every kernel
restored from its snapshot keeps that memory, so each rewrites its own command line (the memory that
/proc/PID/cmdline reads) and its name (/proc/PID/comm) when it becomes something else.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

BUILD_TITLE = "snapkernel build of"
SPARE_TITLE = "snapkernel spare of snapshot"
RESTORED_TITLE = "snapkernel kernel restored from snapshot"
PR_SET_NAME = 15  # prctl(2)
# Fields 48 and 49 of /proc/self/stat (proc(5)), counted here from field 3, the first after the name.
ARG_START_FIELD, ARG_END_FIELD = 48 - 3, 49 - 3


def build_title(notebook: str) -> str:
    """The title of the kernel that runs a notebook's setup cells for a snapshot."""
    return f"{BUILD_TITLE} {Path(notebook).name}"


def spare_title(snapshot_id: str, notebook: str) -> str:
    """The title of a restored kernel that waits for a session (a spare), and of the build being checkpointed."""
    return f"{SPARE_TITLE} {snapshot_id} ({Path(notebook).name})"


def restored_title(snapshot_id: str, notebook: str | None) -> str:
    """The title of a kernel restored from a snapshot, serving a session."""
    return f"{RESTORED_TITLE} {snapshot_id}" + (f" ({Path(notebook).name})" if notebook else "")


def set_process_title(title: str, name: str) -> None:
    """Show `title` as this process's command line and `name` (15 bytes at most) as its name; never fails."""
    try:
        _write_command_line(title)
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, ValueError, IndexError, AttributeError):
        pass  # a title is a courtesy to whoever reads `ps`: the kernel works the same without it


def _write_command_line(title: str) -> None:
    """Overwrite the command-line memory with `title`, cut to fit, then NUL bytes.

    Its last byte is left non-NUL: Linux then reads the command line up to the first NUL, as it does for
    setproctitle(3), so `ps` shows the title alone.
    """
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    start, end = int(fields[ARG_START_FIELD]), int(fields[ARG_END_FIELD])
    size = end - start
    if size < 2:
        return
    text = title.encode(errors="replace")[: size - 2]
    area = text + b"\0" * (size - 1 - len(text)) + b" "
    ctypes.memmove(start, area, size)
