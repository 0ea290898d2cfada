"""The snapkernel kernel: an IPython kernel that replays recorded setup outputs after a restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ipykernel.ipkernel import IPythonKernel
from traitlets import Bool, default

from .config import env_flag
from .setup_section import normalise

REPLAY_ENV_VAR = "SNAPKERNEL_REPLAY_SETUP"


@dataclass
class RecordedCell:
    """A setup cell as it ran during the snapshot build."""

    source: str
    execution_count: int
    outputs: list[dict[str, Any]]
    seconds: float


@dataclass
class StartInfo:
    """How this kernel started, for `%snapshot status` and the first-use note."""

    mode: str = "cold"  # "restored" or "cold"
    reason: str | None = None
    snapshot: str | None = None
    notebook: str | None = None
    restore_s: float | None = None
    from_spare: bool = False
    setup_s: float | None = None
    hook_failures: list[str] = field(default_factory=list)


class SnapKernel(IPythonKernel):
    """IPython kernel with snapshot awareness."""

    implementation = "snapkernel"

    replay_setup = Bool(
        help="When a restored kernel is asked to run the next setup cell unchanged (as Run All "
        "does), send the outputs recorded at build time instead of running it again.",
    ).tag(config=True)

    @default("replay_setup")
    def _replay_setup_default(self) -> bool:
        return env_flag(REPLAY_ENV_VAR, True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.start_info = StartInfo()
        self.setup_record: list[RecordedCell] = []
        self.replay_position = 0
        self.replayed = 0
        self._pending_note: str | None = None

    def announce(self, note: str | None) -> None:
        """Show `note` on stderr with the next executed cell."""
        self._pending_note = note

    def _publish(self, msg_type: str, content: dict[str, Any]) -> None:
        self.session.send(self.iopub_socket, msg_type, content, parent=self.get_parent(), ident=self._topic(msg_type))

    def _replay(self, cell: RecordedCell) -> dict[str, Any]:
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
            expected = self.setup_record[self.replay_position]
            if self.replay_setup and normalise(code) == expected.source:
                self.replay_position += 1
                self.replayed += 1
                return self._replay(expected)
            self.replay_position = len(self.setup_record)
        return await super().do_execute(code, silent, store_history, user_expressions, allow_stdin, **kwargs)
