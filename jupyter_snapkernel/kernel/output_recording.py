"""Record a cell's outputs as nbformat outputs while the shell has no sockets (snapshot builds)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from IPython.core.displayhook import DisplayHook
from IPython.core.displaypub import DisplayPublisher
from IPython.core.interactiveshell import InteractiveShell

Output = dict[str, Any]


class RecordingStream(io.TextIOBase):
    """A text stream that appends what is written to a list of stream outputs."""

    def __init__(self, name: str, outputs: list[Output]) -> None:
        super().__init__()
        self.name = name
        self._outputs = outputs

    @property
    def encoding(self) -> str:  # type: ignore[override]  # TextIOBase's is None: a kernel's streams say UTF-8
        """What a cold kernel's streams say (libraries such as tqdm pick their characters by it)."""
        return "UTF-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text:
            last = self._outputs[-1] if self._outputs else None
            if last and last["output_type"] == "stream" and last["name"] == self.name:
                last["text"] += text
            else:
                self._outputs.append({"output_type": "stream", "name": self.name, "text": text})
        return len(text)


class RecordingDisplayHook(DisplayHook):
    """Turns a cell's result into an execute_result output."""

    def __init__(self, shell: InteractiveShell, outputs: list[Output]) -> None:
        super().__init__(shell=shell)
        self._outputs = outputs

    def write_output_prompt(self) -> None:
        pass

    def write_format_data(self, format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None) -> None:
        assert self.shell is not None, "constructed with its shell"
        self._outputs.append(
            {
                "output_type": "execute_result",
                "execution_count": self.shell.execution_count,
                "data": format_dict,
                "metadata": md_dict or {},
            }
        )


class RecordingDisplayPublisher(DisplayPublisher):
    """Turns display() calls into display_data outputs."""

    def __init__(self, shell: InteractiveShell, outputs: list[Output]) -> None:
        super().__init__(shell=shell)
        self._outputs = outputs

    def publish(self, data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any, **kwargs: Any) -> None:
        transient = kwargs.get("transient") or {}
        self._outputs.append(
            {"output_type": "display_data", "data": data, "metadata": metadata or {}, "transient": transient}
        )

    def clear_output(self, wait: bool = False) -> None:
        self._outputs.append({"output_type": "clear_output", "wait": wait})


# One stream of each name for the whole setup, as a kernel has: what a setup cell binds to sys.stderr (a
# logging handler, say) writes into the outputs of the cell that runs, and into the restored kernel's streams.
SETUP_STREAMS = {name: RecordingStream(name, []) for name in ("stdout", "stderr")}


def rebind_to_kernel_streams() -> None:
    """Point logging handlers that the setup bound to its streams at this kernel's sys.stdout and sys.stderr."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if isinstance(handler, logging.StreamHandler) and isinstance(handler.stream, RecordingStream):
                handler.setStream(sys.stdout if handler.stream.name == "stdout" else sys.stderr)


@contextmanager
def recording(shell: InteractiveShell, outputs: list[Output]) -> Iterator[None]:
    """Route stdout, stderr, results, displays and tracebacks of the shell into `outputs`."""
    saved = (sys.stdout, sys.stderr, shell.displayhook, shell.display_trap.hook, shell.display_pub)

    def record_traceback(etype: type, evalue: BaseException, stb: list[str]) -> None:
        outputs.append({"output_type": "error", "ename": etype.__name__, "evalue": str(evalue), "traceback": stb})

    for stream in SETUP_STREAMS.values():
        stream._outputs = outputs
    sys.stdout, sys.stderr = SETUP_STREAMS["stdout"], SETUP_STREAMS["stderr"]
    shell.displayhook = shell.display_trap.hook = RecordingDisplayHook(shell, outputs)
    shell.display_pub = RecordingDisplayPublisher(shell, outputs)
    # An instance attribute that shadows the method while recording (deleted after): IPython has no hook for it.
    shell._showtraceback = record_traceback  # type: ignore[method-assign]
    try:
        yield
    finally:
        sys.stdout, sys.stderr, shell.displayhook, shell.display_trap.hook, shell.display_pub = saved
        for stream in SETUP_STREAMS.values():
            stream._outputs = []  # what setup threads write between cells and before the restore goes nowhere
        del shell._showtraceback
