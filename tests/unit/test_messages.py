"""The typed messages of the control pipe: each kind survives the wire, and malformed ones are refused."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import pytest

from snapkernel_engine import messages
from snapkernel_engine.control_pipe import PipeChannel
from tests.helpers import REPO

EVERY_EVENT: list[messages.KernelEvent] = [
    messages.CellStarted(0),
    messages.CellDone(1, 0.25, [{"output_type": "stream", "name": "stdout", "text": "café\n"}]),
    messages.SetupFailed(None, "a hook failed"),
    messages.SetupFailed(
        2, "ZeroDivisionError", [{"output_type": "error", "ename": "E", "evalue": "", "traceback": []}]
    ),
    messages.Ready(42, {"files": ["/data/x.csv"], "relative": [], "variables": ["HOME"]}),
    messages.Ready(44, {}, cells=2, timed=True, pipes={"stdin": 0, "control": 7}, quiesce_s=0.125),
    messages.Resumed(43),
    messages.ResumeFailed("OSError: no such file"),
]


@pytest.fixture
def channels() -> Iterator[tuple[PipeChannel, PipeChannel]]:
    """Two channels joined by a pair of pipes: what one sends the other receives."""
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    yield PipeChannel(a_read, a_write), PipeChannel(b_read, b_write)
    for fd in (a_read, a_write, b_read, b_write):
        with contextlib.suppress(OSError):
            os.close(fd)


@pytest.mark.parametrize("event", EVERY_EVENT, ids=lambda event: type(event).__name__)
def test_every_event_arrives_as_it_was_sent(
    channels: tuple[PipeChannel, PipeChannel], event: messages.KernelEvent
) -> None:
    """A kernel event sent over a pipe is received equal, of the same type."""
    kernel, launcher = channels
    messages.send(kernel, event)
    assert messages.receive_event(launcher) == event


def test_requests_arrive_as_they_were_sent(channels: tuple[PipeChannel, PipeChannel]) -> None:
    """The setup and resume requests survive the pipe, defaults included."""
    launcher, kernel = channels
    setup = messages.SetupRequest(["import os", "x = 1"])
    resume = messages.ResumeRequest("/run/kernel-1.json", {"LANG": "C.UTF-8"}, "/home/u", "abc123", 1.5)
    messages.send(launcher, setup)
    messages.send(launcher, resume)
    assert messages.receive_request(kernel, messages.SetupRequest) == setup
    received = messages.receive_request(kernel, messages.ResumeRequest)
    assert received == resume and received.from_spare is False


def test_a_kernel_waiting_at_a_restore_point_tells_a_next_setup_request_from_a_launch(
    channels: tuple[PipeChannel, PipeChannel],
) -> None:
    """After a restore point the next request is either more setup cells or a launch: each arrives as its kind."""
    launcher, kernel = channels
    carry_on = messages.SetupRequest(["y = 2"], "nb.ipynb", "abc", first=2, points=[3], point_seconds=1.0, cwd="/w")
    launch = messages.ResumeRequest("/run/kernel-1.json", {}, "/home/u", "abc123", 1.5)
    for request in (carry_on, launch):
        messages.send(launcher, request)
        assert messages.any_request_from_wire(kernel.receive()) == request
    with pytest.raises(ValueError, match="unknown control pipe request"):
        messages.any_request_from_wire({"request": "dance"})


def test_each_event_kind_has_its_own_name_on_the_wire() -> None:
    """Six kinds, six names; the wire object names its kind under "event"."""
    assert len(messages.EVENTS) == 6
    assert {messages.to_wire(event)["event"] for event in EVERY_EVENT} == set(messages.EVENTS)


@pytest.mark.parametrize(
    ("wire", "problem"),
    [
        ({"event": "exploded"}, "unknown control pipe event"),
        ({"event": messages.CellStarted.EVENT}, "malformed"),
        ({}, "unknown"),
    ],
)
def test_malformed_events_are_refused_with_valueerror(wire: dict[str, object], problem: str) -> None:
    """An unknown kind, or a kind without its fields, is a ValueError that says so."""
    with pytest.raises(ValueError, match=problem):
        messages.event_from_wire(wire)


def test_kernel_pipes_are_named_as_the_snapshot_records_them() -> None:
    """The five pipe names that a build dumps with and a restore hands over."""
    assert messages.KernelPipes(0, 1, 2, 7, 8).by_name() == {
        "stdin": 0,
        "stdout": 1,
        "stderr": 2,
        "control": 7,
        "report": 8,
    }


def test_no_module_spells_an_event_name_outside_the_messages_module() -> None:
    """The event names are string literals only in snapkernel_engine/messages.py (issue 19's acceptance grep):
    every one of them, each a name no state or field shares."""
    names = "|".join(f"\"{name}\"|'{name}'" for name in messages.EVENTS)
    found = subprocess.run(
        ["grep", "-rnE", names, "jupyter_snapkernel", "engine", "labextension/src", "--include=*.py", "--include=*.ts"],
        cwd=REPO, capture_output=True, text=True, check=False,
    ).stdout.splitlines()  # fmt: skip
    assert [line for line in found if not line.startswith("engine/snapkernel_engine/messages.py")] == []
