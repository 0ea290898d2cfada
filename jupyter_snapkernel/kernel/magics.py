"""`%%snapshot` marks the setup boundary; `%snapshot status|build|list|rm` manage snapshots."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from snapkernel_engine import SnapshotError, SnapshotStore

from ..config import SnapKernelSettings
from ..notebook.binding import NO_NOTEBOOK
from ..notebook.setup_section import CELL_MAGIC, NotebookError, read_setup_section
from ..notebook.state import notebook_file_state, user_stores
from ..paths import open_store
from .kernel import StartInfo

if TYPE_CHECKING:
    from ..notebook.builder import BuildProgress

USAGE = "usage: %snapshot status | build | list | rm ID   (%%snapshot marks the setup cell)"


def _size(size: int) -> str:
    """A size in bytes, in MB for people."""
    return f"{size / 1e6:.1f} MB"


def blank_marker_line(lines: list[str]) -> list[str]:
    """Blank a leading `%%snapshot` line so that the cell runs as itself (an IPython input transformer).

    Run through the cell magic, the body would be a cell inside the cell: its result shown twice, its
    exception reported as the outer cell's success. The blank line keeps tracebacks' line numbers.
    """
    if lines and (lines[0].rstrip() == CELL_MAGIC or lines[0].startswith((CELL_MAGIC + " ", CELL_MAGIC + "\t"))):
        return ["\n", *lines[1:]]
    return lines


@magics_class
class SnapshotMagics(Magics):
    """The %snapshot magics."""

    def __init__(self, shell: Any = None, **kwargs: Any) -> None:
        """Register the magics, and the transformer that runs `%%snapshot` cells as plain cells."""
        super().__init__(shell=shell, **kwargs)
        # The kernel registers these magics again after a restore, on the same shell.
        if shell is not None and blank_marker_line not in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.append(blank_marker_line)

    @line_cell_magic
    def snapshot(self, line: str, cell: str | None = None) -> Any:
        """Run the cell (as %%snapshot), or manage snapshots (as %snapshot COMMAND)."""
        if cell is not None:
            # Only a direct run_cell_magic call gets here (cells are rid of the marker line before
            # execution): the inner cell shows its result itself, so the magic returns none to show again.
            assert self.shell is not None, "magics run in a shell"
            self.shell.run_cell(cell, store_history=False)
            return None
        command, _, argument = line.strip().partition(" ")
        handlers = {"status": self._status, "build": self._build, "list": self._list, "rm": self._remove}
        handler = handlers.get(command or "status")
        if handler is None:
            print(USAGE)
            return None
        try:
            handler(argument.strip())
        except (SnapshotError, NotebookError) as error:  # a notebook that is not valid: one line, no traceback
            print(f"snapshot {command}: {error}")
        return None

    @property
    def store(self) -> SnapshotStore:
        """This user's snapshot store."""
        return open_store()

    @property
    def start_info(self) -> StartInfo | None:
        """How this kernel started (None: not a snapkernel kernel)."""
        return getattr(getattr(self.shell, "kernel", None), "start_info", None)

    @property
    def notebook(self) -> str | None:
        """The path of this kernel's notebook, as its launcher was told it (a server's session, a bound
        kernelspec or SNAPKERNEL_NOTEBOOK)."""
        info = self.start_info
        return (info.notebook if info is not None else None) or os.environ.get("JPY_SESSION_NAME")

    def _status(self, _: str) -> None:
        """Print how this kernel started and the state of its notebook's snapshot."""
        kernel = getattr(self.shell, "kernel", None)
        info = self.start_info
        if kernel is not None and info is not None and info.mode == "restored":
            ahead = ", restored ahead of time" if info.from_spare else ""
            print(
                f"kernel: restored from snapshot {info.snapshot} in {info.restore_s:.2f} s{ahead} "
                f"(the setup took {info.setup_s:.1f} s when built: {info.saved_s:.1f} s saved)"
            )
            print(f"setup cells replayed: {kernel.replayed} of {len(kernel.setup_record)}")
        elif info is not None:
            print(f"kernel: cold start{f' ({info.reason})' if info.reason else ''}")
        if not self.notebook:
            print(f"notebook: unknown ({NO_NOTEBOOK})")
            return
        named_by = f" (named by {info.named_by})" if info is not None and info.named_by else ""
        print(f"notebook: {self.notebook}{named_by}")
        if not os.path.exists(self.notebook):
            print("notebook snapshot: none (the notebook file does not exist)")
            return
        settings = SnapKernelSettings()
        state = notebook_file_state(user_stores(settings), self.notebook, quota_bytes=settings.quota_bytes)
        line = f"notebook snapshot: {state.state}"
        if state.queue_ahead is not None:
            line += f" ({state.queue_ahead} ahead)"
        if state.snapshot is not None:
            line += f" ({state.snapshot.id}, {_size(state.snapshot.size_bytes)}, created {state.snapshot.created})"
        if state.in_shared_root:
            line += " from a shared root"
        print(line)
        for reason in state.reasons:
            print(f"  {reason}")

    def _build(self, _: str) -> None:
        """Build this notebook's snapshot now, printing progress."""
        from ..notebook.builder import build_snapshot, progress_line

        if not self.notebook:
            print(f"snapshot build: {NO_NOTEBOOK}")
            return
        started = time.perf_counter()
        section = read_setup_section(self.notebook)
        cells = len(section.cells) if section else 0

        def progress(event: BuildProgress) -> None:
            """Print a build event."""
            line = progress_line(event, cells)
            if line:
                print(f"{line}…", flush=True)

        manifest = build_snapshot(self.notebook, self.store, section=section, progress=progress)
        print(f"snapshot {manifest.id} ready: {_size(manifest.size_bytes)} in {time.perf_counter() - started:.1f} s")

    def _list(self, _: str) -> None:
        """Print the store's snapshots."""
        manifests = self.store.list()
        if not manifests:
            print("no snapshots")
        for manifest in manifests:
            notebook = manifest.labels.get("notebook", "?")
            print(f"{manifest.id}  {manifest.created}  {_size(manifest.size_bytes):>10}  {notebook}")

    def _remove(self, snapshot_id: str) -> None:
        """Delete a snapshot by id, with the restore points incremental to it."""
        if not snapshot_id:
            print(USAGE)
            return
        print("deleted " + ", ".join(self.store.delete(snapshot_id)))
