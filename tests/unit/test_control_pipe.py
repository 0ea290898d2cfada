"""The control pipe's wire format: one JSON object per line over raw pipe fds."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import pytest

from snapkernel_engine.control_pipe import PipeChannel, encode, read_message, take_message, write_message


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe's read and write fds, closed after the test (unless the test closed them)."""
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


def test_a_message_arrives_as_it_was_sent(pipe: tuple[int, int]) -> None:
    """Nested data, unicode and numbers survive a write and a read."""
    read_fd, write_fd = pipe
    message = {"event": "resumed", "env": {"LANG": "C.UTF-8"}, "name": "café ☕", "pid": 7, "ok": True, "x": None}
    write_message(write_fd, message)
    assert read_message(read_fd) == message


def test_reading_a_message_leaves_the_next_one_in_the_pipe(pipe: tuple[int, int]) -> None:
    """Messages are read byte by byte: the next one stays in the pipe for its own reader."""
    read_fd, write_fd = pipe
    write_message(write_fd, {"n": 1})
    write_message(write_fd, {"n": 2})
    assert read_message(read_fd) == {"n": 1}
    assert os.read(read_fd, 100) == encode({"n": 2})


def test_a_message_larger_than_the_pipe_buffer_is_written_whole(pipe: tuple[int, int]) -> None:
    """A message bigger than a pipe holds is written in parts, and read whole."""
    read_fd, write_fd = pipe
    message = {"blob": "x" * 300_000}
    writer = threading.Thread(target=write_message, args=(write_fd, message))
    writer.start()
    try:
        assert read_message(read_fd) == message
    finally:
        writer.join(timeout=10)
    assert not writer.is_alive()


def test_a_closed_pipe_ends_reading_with_eoferror(pipe: tuple[int, int]) -> None:
    """EOFError when the writer closes, also in the middle of a message."""
    read_fd, write_fd = pipe
    os.write(write_fd, b'{"event": "cel')
    os.close(write_fd)
    with pytest.raises(EOFError):
        read_message(read_fd)


def test_a_line_that_is_not_a_json_object_is_refused(pipe: tuple[int, int]) -> None:
    """A JSON line that is not an object is not a message: ValueError."""
    read_fd, write_fd = pipe
    os.write(write_fd, b"[1, 2]\n")
    with pytest.raises(ValueError, match="not a JSON object"):
        read_message(read_fd)
    with pytest.raises(ValueError, match="not a JSON object"):
        take_message(bytearray(b'"text"\n'))


def test_take_message_waits_for_a_whole_line() -> None:
    """An empty or partial buffer gives None and is left as it was."""
    buffer = bytearray()
    assert take_message(buffer) is None
    buffer += b'{"event": "ce'
    assert take_message(buffer) is None
    assert buffer == bytearray(b'{"event": "ce')


def test_take_message_takes_one_message_and_keeps_the_rest() -> None:
    """Bytes read in blocks hold parts of several messages: each is taken once it is whole."""
    buffer = bytearray(b'{"event": "cell", "index": 0}\n{"event": "che')
    assert take_message(buffer) == {"event": "cell", "index": 0}
    assert buffer == bytearray(b'{"event": "che')
    assert take_message(buffer) is None
    buffer += b'ckpoint"}\n' + encode({"event": "ready"})
    assert take_message(buffer) == {"event": "checkpoint"}
    assert take_message(buffer) == {"event": "ready"}
    assert take_message(buffer) is None
    assert buffer == bytearray()


def test_a_channel_carries_messages_both_ways() -> None:
    """Two PipeChannels over crossed pipes talk to each other."""
    to_kernel_read, to_kernel_write = os.pipe()
    to_launcher_read, to_launcher_write = os.pipe()
    try:
        launcher = PipeChannel(to_launcher_read, to_kernel_write)
        kernel = PipeChannel(to_kernel_read, to_launcher_write)
        launcher.send(connection_file="/tmp/kernel.json", cwd="/home/ada")
        assert kernel.receive() == {"connection_file": "/tmp/kernel.json", "cwd": "/home/ada"}
        kernel.send(event="resumed")
        assert launcher.receive() == {"event": "resumed"}
    finally:
        for fd in (to_kernel_read, to_kernel_write, to_launcher_read, to_launcher_write):
            os.close(fd)
