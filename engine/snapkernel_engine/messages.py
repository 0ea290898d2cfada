"""The messages that cross a kernel's control pipe, one dataclass each, and the names of a kernel's pipes.

A build: the launcher sends a SetupRequest; the build kernel answers CellStarted and CellDone for each
setup cell up to the next restore point, then Ready (or SetupFailed), and is checkpointed while it waits.
Its next request is another SetupRequest (run the cells after that point: the live build kernel, or one
restored from the point) or a ResumeRequest: the launcher of a restore hands over this launch, and the
restored kernel answers Resumed (or ResumeFailed). On the wire each is one JSON object (control_pipe); the
kernel's events carry their kind under "event", the launcher's requests under "request".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from .control_pipe import PipeChannel

EVENT_KEY = "event"
REQUEST_KEY = "request"


@dataclass(frozen=True)
class KernelPipes:
    """The fds a snapshot's kernel holds, under the names its snapshot records them by (the store checks that
    a restore hands it every one of these names, and no other)."""

    stdin: int
    stdout: int
    stderr: int
    control: int  # the launcher writes requests here
    report: int  # the kernel writes its events here

    def by_name(self) -> dict[str, int]:
        """The fds by pipe name, as the store's dump and restore take them."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


@dataclass(frozen=True)
class SetupRequest:
    """Launcher to build kernel: the setup cells to run, from setup cell `first` on, up to the next restore
    point; the notebook's file name and the id that point's snapshot will have (its process title shows both).

    The kernel stops for a checkpoint after the last of `cells`, after a cell whose index is in `points`
    (tagged cells), and after a cell that ran for `point_seconds` or more (0: never for time). A kernel
    restored from a restore point gets the launch's `env` and `cwd` (empty: it keeps its own).
    """

    REQUEST: ClassVar[str] = "setup"
    cells: list[str]
    notebook: str = ""
    snapshot: str = ""
    first: int = 0
    points: list[int] = field(default_factory=list)
    point_seconds: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""


@dataclass(frozen=True)
class ResumeRequest:
    """Launcher to restored kernel: this launch's connection file, environment and working folder."""

    REQUEST: ClassVar[str] = "resume"
    connection_file: str
    env: dict[str, str]
    cwd: str
    snapshot: str
    restore_started: float  # time.time() when the launch asked for the restore
    from_spare: bool = False
    setup_s: float = 0.0  # what the build took from the kernel's start to the end of the setup (its label)
    notebook: str = ""  # the notebook the kernel starts for ("": unknown)
    notebook_named_by: str = ""  # what named it: a server's session, a bound kernelspec, an environment variable


@dataclass(frozen=True)
class CellStarted:
    """Build kernel: setup cell `index` (from 0) started."""

    EVENT: ClassVar[str] = "setup_cell_started"
    index: int


@dataclass(frozen=True)
class CellDone:
    """Build kernel: setup cell `index` ran without error, taking `seconds`, with these nbformat outputs."""

    EVENT: ClassVar[str] = "setup_cell_done"
    index: int
    seconds: float
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SetupFailed:
    """Build kernel: setup cell `index` failed (None: a before_snapshot hook did), with the error's text."""

    EVENT: ClassVar[str] = "setup_failed"
    index: int | None
    error: str
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Ready:
    """Build kernel: the first `cells` setup cells ran; checkpoint me now. `inputs` is what they read (files,
    variables); `timed` says the point is there only because its last cell ran long (not tagged, not the end);
    `pipes` are the kernel's own fds by pipe name (KernelPipes.by_name), which its snapshot records; `quiesce_s`
    is how long the before_snapshot hooks and the quiescing of libraries took after the cells."""

    EVENT: ClassVar[str] = "setup_ready"
    pid: int
    inputs: dict[str, Any] = field(default_factory=dict)
    cells: int = 0
    timed: bool = False
    pipes: dict[str, int] = field(default_factory=dict)
    quiesce_s: float = 0.0


@dataclass(frozen=True)
class Resumed:
    """Restored kernel: it took the launch's connection and listens on its sockets; the restore took
    `restore_s` and saved `saved_s` of a setup that took `setup_s` when built (the one figure shown)."""

    EVENT: ClassVar[str] = "resumed"
    pid: int
    restore_s: float | None = None
    setup_s: float | None = None
    saved_s: float | None = None


@dataclass(frozen=True)
class ResumeFailed:
    """Restored kernel: finishing its start after the restore failed, for this reason (and its errno, if any:
    EADDRINUSE says a port of the launch's connection was taken)."""

    EVENT: ClassVar[str] = "resume_failed"
    error: str
    errno: int | None = None


KernelEvent = CellStarted | CellDone | SetupFailed | Ready | Resumed | ResumeFailed
Request = SetupRequest | ResumeRequest
EVENTS: dict[str, type[KernelEvent]] = {
    kind.EVENT: kind for kind in (CellStarted, CellDone, SetupFailed, Ready, Resumed, ResumeFailed)
}
REQUESTS: dict[str, type[Request]] = {kind.REQUEST: kind for kind in (SetupRequest, ResumeRequest)}
RequestType = TypeVar("RequestType", SetupRequest, ResumeRequest)


def to_wire(message: KernelEvent | Request) -> dict[str, Any]:
    """A message as the JSON object the pipe carries (no deep copy: outputs can be large)."""
    wire = {item.name: getattr(message, item.name) for item in fields(message)}
    if isinstance(message, SetupRequest | ResumeRequest):
        return {REQUEST_KEY: message.REQUEST, **wire}
    return {EVENT_KEY: message.EVENT, **wire}


def _build(kind: type[Any], wire: Mapping[str, Any]) -> Any:
    """An instance of dataclass `kind` from the fields of `wire` (others are ignored); ValueError if one lacks."""
    try:
        return kind(**{item.name: wire[item.name] for item in fields(kind) if item.name in wire})
    except TypeError as error:
        raise ValueError(f"malformed control pipe message {kind.__name__}: {error}") from None


def event_from_wire(wire: Mapping[str, Any]) -> KernelEvent:
    """The kernel event a JSON object carries; ValueError for an unknown kind or missing fields."""
    kind = EVENTS.get(str(wire.get(EVENT_KEY)))
    if kind is None:
        raise ValueError(f"unknown control pipe event {str(wire.get(EVENT_KEY))[:40]!r}")
    event: KernelEvent = _build(kind, wire)
    return event


def any_request_from_wire(wire: Mapping[str, Any]) -> Request:
    """The request a JSON object carries, of whichever kind it names; ValueError for an unknown kind."""
    kind = REQUESTS.get(str(wire.get(REQUEST_KEY)))
    if kind is None:
        raise ValueError(f"unknown control pipe request {str(wire.get(REQUEST_KEY))[:40]!r}")
    request: Request = _build(kind, wire)
    return request


def request_from_wire(kind: type[RequestType], wire: Mapping[str, Any]) -> RequestType:
    """The request of type `kind` a JSON object carries; ValueError when a field is missing."""
    request: RequestType = _build(kind, wire)
    return request


def send(channel: PipeChannel, message: KernelEvent | Request) -> None:
    """Send one typed message over a channel."""
    channel.send(**to_wire(message))


def receive_event(channel: PipeChannel) -> KernelEvent:
    """Wait for the kernel's next event on a channel (EOFError when the pipe closes)."""
    return event_from_wire(channel.receive())


def receive_request(channel: PipeChannel, kind: type[RequestType]) -> RequestType:
    """Wait for the launcher's next request, of type `kind` (EOFError when the pipe closes)."""
    return request_from_wire(kind, channel.receive())
