"""`%%snapshot` marks the setup boundary; `%snapshot status|build|list|rm` manage snapshots."""

from __future__ import annotations

import os
import time
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class

from engine import SnapshotError, SnapshotStore

from .paths import open_store
from .status import notebook_state

USAGE = "usage: %snapshot status | build | list | rm ID   (%%snapshot marks the setup cell)"


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


@magics_class
class SnapshotMagics(Magics):
    """The %snapshot magics."""

    @line_cell_magic
    def snapshot(self, line: str, cell: str | None = None) -> Any:
        """Run the cell (as %%snapshot), or manage snapshots (as %snapshot COMMAND)."""
        if cell is not None:
            return self.shell.run_cell(cell, store_history=False).result
        command, _, argument = line.strip().partition(" ")
        handlers = {"status": self._status, "build": self._build, "list": self._list, "rm": self._remove}
        handler = handlers.get(command or "status")
        if handler is None:
            print(USAGE)
            return None
        try:
            handler(argument.strip())
        except SnapshotError as error:
            print(f"snapshot {command}: {error}")
        return None

    @property
    def store(self) -> SnapshotStore:
        return open_store()

    @property
    def notebook(self) -> str | None:
        return os.environ.get("JPY_SESSION_NAME")

    def _status(self, _: str) -> None:
        kernel = getattr(self.shell, "kernel", None)
        info = getattr(kernel, "start_info", None)
        if info is not None and info.mode == "restored":
            saved = max((info.setup_s or 0) - (info.restore_s or 0), 0)
            ahead = ", restored ahead of time" if info.from_spare else ""
            print(
                f"kernel: restored from snapshot {info.snapshot} in {info.restore_s:.2f} s{ahead} "
                f"(the setup took {info.setup_s:.2f} s when built: {saved:.2f} s saved)"
            )
            print(f"setup cells replayed: {kernel.replayed} of {len(kernel.setup_record)}")
        elif info is not None:
            print(f"kernel: cold start{f' ({info.reason})' if info.reason else ''}")
        if not self.notebook or not os.path.exists(self.notebook):
            print("notebook: unknown (not started by a Jupyter server)")
            return
        state = notebook_state(self.store, self.notebook)
        line = f"notebook snapshot: {state.state}"
        if state.snapshot is not None:
            line += f" ({state.snapshot.id}, {_size(state.snapshot.size_bytes)}, created {state.snapshot.created})"
        print(line)
        for reason in state.reasons:
            print(f"  {reason}")

    def _build(self, _: str) -> None:
        from .builder import build_snapshot

        if not self.notebook:
            print("snapshot build: no notebook path (JPY_SESSION_NAME is unset)")
            return
        started = time.perf_counter()

        def progress(event: dict[str, Any]) -> None:
            if event["event"] == "cell":
                print(f"running setup cell {event['index'] + 1}…", flush=True)
            elif event["event"] == "checkpoint":
                print("checkpointing…", flush=True)

        manifest = build_snapshot(self.notebook, self.store, progress=progress)
        print(f"snapshot {manifest.id} ready: {_size(manifest.size_bytes)} in {time.perf_counter() - started:.1f} s")

    def _list(self, _: str) -> None:
        manifests = self.store.list()
        if not manifests:
            print("no snapshots")
        for manifest in manifests:
            notebook = manifest.labels.get("notebook", "?")
            print(f"{manifest.id}  {manifest.created}  {_size(manifest.size_bytes):>10}  {notebook}")

    def _remove(self, snapshot_id: str) -> None:
        if not snapshot_id:
            print(USAGE)
            return
        self.store.delete(snapshot_id)
        print(f"deleted {snapshot_id}")
