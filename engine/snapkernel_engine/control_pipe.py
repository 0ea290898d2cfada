"""The one wire format between a launcher and what it starts (build kernels, restored kernels, namespace
inits): newline-delimited JSON objects over raw pipe fds."""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False  # no typing import for annotations alone: every restore's namespace init loads this
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as a line of JSON."""
    return (json.dumps(message) + "\n").encode()


def _message(line: bytes) -> dict[str, Any]:
    """Decode one line into a message; raise ValueError when it is not a JSON object."""
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"control pipe message is not a JSON object: {line[:80]!r}")
    return message


def write_message(fd: int, message: Mapping[str, Any]) -> None:
    """Write one message whole (a pipe may take it in parts)."""
    data = encode(message)
    while data:
        data = data[os.write(fd, data) :]


def read_message(fd: int) -> dict[str, Any]:
    """Read one message byte by byte, so nothing after its newline is taken from the pipe.

    Byte-wise because what follows belongs to someone else: the next reader of the pipe, or a process
    about to be checkpointed, which must hold nothing in a buffer. Raises EOFError when the pipe closes.
    """
    line = bytearray()
    while not line.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError("control pipe closed")
        line += chunk
    return _message(bytes(line))


def take_message(buffer: bytearray) -> dict[str, Any] | None:
    """Take the first whole message out of `buffer` (bytes read in blocks); None until one has arrived."""
    if b"\n" not in buffer:
        return None
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return _message(line)


class PipeChannel:
    """Messages both ways over a pair of raw pipe fds."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd

    def send(self, **message: Any) -> None:
        """Send one message."""
        write_message(self.write_fd, message)

    def receive(self) -> dict[str, Any]:
        """Wait for the next message."""
        return read_message(self.read_fd)
