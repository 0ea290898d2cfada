"""The snapkernel kernel: an IPython kernel that replays recorded setup outputs after a restore."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import Bool

from .. import env_names
from ..config import env_default, is_on
from ..notebook.setup_section import normalise


@dataclass
class RecordedCell:
    """A setup cell as it ran during the snapshot build."""

    source: str
    execution_count: int
    outputs: list[dict[str, Any]]
    seconds: float


def setup_saved_s(setup_s: float, restore_s: float) -> float:
    """The seconds a restore saved (to 0.1 s): the build's time from the kernel's start to the end of its setup,
    less the restore. The one figure of the savings, shown by the toast and by `%snapshot status`."""
    return round(max(setup_s - restore_s, 0.0), 1)


@dataclass
class StartInfo:
    """How this kernel started, for `%snapshot status` and the first-use note."""

    mode: str = "cold"  # "restored" or "cold"
    reason: str | None = None
    snapshot: str | None = None
    notebook: str | None = None
    named_by: str | None = None  # what named the notebook: a server's session, a bound kernelspec, SNAPKERNEL_NOTEBOOK
    restore_s: float | None = None
    from_spare: bool = False
    setup_s: float | None = None  # what the build took from the kernel's start to the end of the setup
    saved_s: float | None = None  # setup_saved_s: the one figure the toast and `%snapshot status` show
    hook_failures: list[str] = field(default_factory=list)


class SnapKernel(IPythonKernel):
    """IPython kernel with snapshot awareness."""

    implementation = "snapkernel"

    replay_setup = Bool(
        help="When a restored kernel is asked to run the next setup cell unchanged (as Run All "
        "does), send the outputs recorded at build time instead of running it again.",
    ).tag(config=True)
    _replay_setup_default = env_default("replay_setup", env_names.REPLAY_SETUP, is_on, True)

    show_start_notes = Bool(
        help="Also say on stderr with the first executed cell why this kernel started cold. Off by default: that "
        "output would be saved into the notebook, and a cold kernel's outputs equal plain ipykernel's. The note is "
        "always in the kernel's banner (kernel_info), in `%snapshot status`, in JupyterLab's toast and in the "
        "summary of headless runs.",
    ).tag(config=True)
    _show_start_notes_default = env_default("show_start_notes", env_names.START_NOTES, is_on, False)

    def __init__(self, **kwargs: Any) -> None:
        """A kernel that knows nothing yet of how it started (its app says so next)."""
        super().__init__(**kwargs)
        self.start_info = StartInfo()
        self.setup_record: list[RecordedCell] = []
        self.replay_position = 0
        self.replayed = 0
        self._pending_note: str | None = None

    @property
    def banner(self) -> str:  # type: ignore[override]  # a property over a declared attribute, as ipykernel's own
        """IPython's banner, then how this kernel started: frontends show it on connecting, no notebook saves it."""
        state = random.getstate()
        try:
            banner = str(super().banner or "")
        finally:
            # IPython picks the banner's tip with the global `random`, and frontends ask for kernel info at any
            # time: a setup that seeded `random` must draw after it what a cold run draws.
            random.setstate(state)
        note = self.start_note()
        return f"{banner}{note}\n" if note else banner

    def start_note(self) -> str | None:
        """One line on why this kernel started cold; None for a restored kernel or a cold start without a reason."""
        if self.start_info.mode != "cold" or not self.start_info.reason:
            return None
        return f"snapkernel: cold start ({self.start_info.reason})"

    def announce(self, note: str | None, always: bool = False) -> None:
        """Show `note` on stderr with the next executed cell, unless it only says how the kernel started (and
        the launcher did not ask for it `always`: no frontend of this kernel shows how kernels start)."""
        # A cold kernel's one note is why it started cold; a restored kernel's notes are failed
        # after_restore hooks, which no launcher reports and which may explain failing cells.
        if self.start_info.mode == "cold" and not self.show_start_notes and not always:
            return
        self._pending_note = note

    def _publish(self, msg_type: str, content: dict[str, Any]) -> None:
        """Send an iopub message on behalf of the request being handled."""
        assert self.session is not None, "a kernel handling a request has its session"
        self.session.send(self.iopub_socket, msg_type, content, parent=self.get_parent(), ident=self._topic(msg_type))

    def _next_replay(self, code: str) -> RecordedCell | None:
        """The recorded setup cell that `code` replays, if it is the next one unchanged."""
        if not self.replay_setup or self.replay_position >= len(self.setup_record):
            return None
        expected = self.setup_record[self.replay_position]
        return expected if normalise(code) == expected.source else None

    def _publish_execute_input(self, code: str, parent: Any, execution_count: int) -> None:
        """Announce a cell with the count it will reply with: a replayed setup cell keeps its recorded In [n]."""
        replayed = self._next_replay(code)
        super()._publish_execute_input(code, parent, replayed.execution_count if replayed else execution_count)

    def _replay(self, cell: RecordedCell) -> dict[str, Any]:
        """Publish a recorded setup cell's outputs and reply as its run did."""
        marker = {"snapkernel": {"replayed": True, "snapshot": self.start_info.snapshot}}
        for output in cell.outputs:
            kind = output["output_type"]
            if kind == "stream":
                self._publish("stream", {"name": output["name"], "text": output["text"]})
            elif kind == "display_data":
                self._publish(
                    "display_data",
                    {
                        "data": output["data"],
                        "metadata": {**output["metadata"], **marker},
                        "transient": output.get("transient", {}),
                    },
                )
            elif kind == "execute_result":
                self._publish(
                    "execute_result",
                    {
                        "execution_count": cell.execution_count,
                        "data": output["data"],
                        "metadata": {**output["metadata"], **marker},
                    },
                )
            elif kind == "clear_output":
                self._publish("clear_output", {"wait": output["wait"]})
        return {
            "status": "ok",
            "execution_count": cell.execution_count,
            "user_expressions": {},
            "payload": [],
            **marker,
        }

    async def do_execute(
        self,
        code: str,
        silent: bool,
        store_history: bool = True,
        user_expressions: dict[str, Any] | None = None,
        allow_stdin: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Replay an unchanged setup cell; run anything else normally."""
        if self._pending_note and not silent:
            self._publish("stream", {"name": "stderr", "text": self._pending_note + "\n"})
            self._pending_note = None
        if not silent and self.replay_position < len(self.setup_record):
            expected = self._next_replay(code)
            if expected is not None:
                self.replay_position += 1
                self.replayed += 1
                return self._replay(expected)
            self.replay_position = len(self.setup_record)
        return await super().do_execute(code, silent, store_history, user_expressions, allow_stdin, **kwargs)
