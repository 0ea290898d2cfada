"""`jupyter snapkernel check`: run a notebook cold and restored, and compare what its cells show.

The one comparison of restored against cold runs: the CLI, the REST API, `build --shared --check`
and the project's own tests all use it. What may differ between two runs by nature is normalised
first (see NORMALISATIONS and docs/reliability.md).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import nbformat
from traitlets.config import Config

from snapkernel_engine import SnapshotError

from ..answers import CheckAnswer, CheckDifference
from ..config import SnapKernelSettings
from ..notebook.setup_section import NotebookError, setup_section_of
from ..notebook.state import notebook_file_state, user_stores
from .headless import RunError, RunSummary, notebook_to_run, run, run_notebook

CheckState = Literal["running", "equal", "different", "cold_differs", "error"]
# The exit codes of `jupyter snapkernel check` (2 is argparse's, for a wrong command line).
EXIT_CODES: dict[str, int] = {"equal": 0, "different": 1, "cold_differs": 3, "error": 4}
COLD_DIFFERS_HINT = "cold runs differ too: not a restore difference"
SHOWN_CHARS = 400  # of each output in a difference

# (pattern, replacement): what differs between two runs of one notebook by nature, cold or restored.
NORMALISATIONS: tuple[tuple[str, str], ...] = (
    (r"0x[0-9a-fA-F]{4,}", "0x…"),  # object addresses in reprs
    (r'"model_id": "[0-9a-f]+"', '"model_id": "…"'),  # widget models
    (r"model_id='[0-9a-f]+'", "model_id='…'"),
    (r"ipykernel_\d+/\d+\.py", "ipykernel_…/….py"),  # the kernel's file of a cell, named in tracebacks
    (r"\btmp[A-Za-z0-9_]{8}\b", "tmp…"),  # tempfile's names
    (r"(Wall time|CPU times|user|sys|total): [^\n]*", r"\1: …"),  # %time and %%time
    (r"\[\d+:\d+(?::\d+)?<[^\]\n]*\]", "[…]"),  # tqdm's elapsed<remaining, rate]
    (r"\d+(?:\.\d+)?\s?(?:it/s|s/it)\b", "… it/s"),  # tqdm's rates elsewhere
    (r"\b\d+(?:\.\d+)?\s?(?:s|ms|µs|us|ns|sec|seconds)\b", "… s"),  # printed durations
)


@dataclass
class Difference:
    """Where a run first showed something other than the first cold run, and both outputs."""

    cell: int  # the cell's position in the notebook, from 0
    source: str  # the cell's first source line
    cold: str
    restored: str  # of a restored run; of another cold run when cold runs differ among themselves
    hint: str | None = None  # a known cause the difference matches

    def to_dict(self) -> CheckDifference:
        """The difference as the REST API answers it."""
        return CheckDifference(
            cell=self.cell, source=self.source, cold=self.cold, restored=self.restored, hint=self.hint
        )


@dataclass
class CheckResult:
    """The verdict of a check: equal, different, cold runs differing among themselves, or an error."""

    path: str
    state: CheckState
    runs: int
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None
    elapsed_s: float = 0.0
    built: bool = False  # the check built the snapshot first

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return asdict(self)

    @property
    def exit_code(self) -> int:
        """The exit code of `jupyter snapkernel check` for this result."""
        return EXIT_CODES.get(self.state, EXIT_CODES["error"])


class CheckError(Exception):
    """A check that could not compare: no setup cell, a failed build, a kernel that did not start or restore."""


def normalise(text: str, volatile: Sequence[str] = ()) -> str:
    """Replace what differs between runs by nature (NORMALISATIONS, then the caller's `volatile` patterns)."""
    for pattern, replacement in NORMALISATIONS:
        text = re.sub(pattern, replacement, text)
    for pattern in volatile:
        text = re.sub(pattern, "<volatile>", text)
    return text


def _image(mime: str, data: Any) -> str:
    """An image as its type and a digest of its bytes: equal images read equal, others differ."""
    encoded = data if isinstance(data, str) else json.dumps(data)
    return f"<{mime} sha256:{hashlib.sha256(encoded.encode()).hexdigest()[:12]}>"


def output_text(output: dict[str, Any]) -> str:
    """What a person sees of one output, as text: streams, rich data by type, errors by name and value."""
    kind = output["output_type"]
    if kind == "stream":
        return str(output["text"])
    if kind == "error":
        return f"{output['ename']}: {output['evalue']}"
    data = output.get("data", {})
    shown = [str(data.get("text/plain", ""))]
    for mime in sorted(data):
        if mime.startswith("image/"):
            shown.append(_image(mime, data[mime]))
        elif mime != "text/plain":
            value = data[mime]
            shown.append(f"[{mime}] {value if isinstance(value, str) else json.dumps(value, sort_keys=True)}")
    return "\n".join(shown)


def as_displayed(text: str) -> str:
    """A stream's text as a frontend shows it: a carriage return starts its line again (progress bars)."""
    lines = []
    for line in text.split("\n"):
        rewrites = [part for part in line.split("\r") if part]
        lines.append(rewrites[-1] if rewrites else "")
    return "\n".join(lines)


def shown(outputs: list[dict[str, Any]]) -> list[str]:
    """A cell's outputs as a person sees them: consecutive writes to one stream read as one text."""
    texts: list[str] = []
    previous = None
    for output in outputs:
        stream = output.get("name") if output["output_type"] == "stream" else None
        if stream is not None and stream == previous:
            texts[-1] += output["text"]
        else:
            texts.append(output_text(output))
        previous = stream
    return [as_displayed(text) for text in texts]


def cell_outputs(book: nbformat.NotebookNode, volatile: Sequence[str] = ()) -> list[list[str]]:
    """Every cell's normalised outputs (markdown cells have none)."""
    return [[normalise(text, volatile) for text in shown(cell.get("outputs", []))] for cell in book.cells]


def _cut(texts: list[str]) -> str:
    """A cell's outputs as one text, shortened for a report."""
    text = "\n".join(texts)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 1] + "…"


def first_difference(book: nbformat.NotebookNode, cold: list[list[str]], other: list[list[str]]) -> Difference | None:
    """The first cell whose outputs differ between a cold run and another run (None: all equal)."""
    for index, (expected, got) in enumerate(zip(cold, other, strict=True)):
        if expected != got:
            first_line = (book.cells[index].source.strip().splitlines() or [""])[0]
            return Difference(index, first_line, _cut(expected), _cut(got))
    return None


# (what in the setup's sources or the outputs shows it, the hint): the known ways a restored kernel differed.
SEEDING = re.compile(r"\b(?:seed|manual_seed|manual_seed_all|set_seed)\s*\(")
ENVIRONMENT = re.compile(
    r"os\.environ\[[^\]]+\]\s*=(?!=)|os\.environ\.(?:update|setdefault|pop|clear)\(|del os\.environ|"
    r"os\.(?:putenv|unsetenv)\(|^\s*%env\s+\S+[\s=]\S|%set_env\b",
    re.MULTILINE,
)
HINTS = {
    "after_restore": "an @after_restore hook of the setup runs only in restored kernels: what it changes "
    "differs from a cold run",
    "figures": "figures made after the setup are missing or differ: the restored kernel's matplotlib backend "
    "is not a cold kernel's (a known cause; importing matplotlib.pyplot in a setup cell avoids it)",
    "seeding": "the setup seeds a random generator: restored kernels reseed global generators, so their draws "
    "differ from a cold run's (a known cause)",
    "environment": "the setup changes environment variables (os.environ): a restored kernel may not keep them "
    "(a known cause)",
    "setup_cell": "this is a setup cell: a restored kernel replays the outputs its build kernel recorded, "
    "whose sys.stdout/sys.stderr differ from a cold kernel's (a tqdm bar there is drawn in ASCII, say)",
    "logging": "a logging handler made in the setup writes to the build kernel's sys.stderr: a restored kernel "
    "does not show its records (set the handler up after the setup cells, or again in an @after_restore hook)",
    "folder": "the snapshot was built for {notebook} in another folder: its setup may have read that folder's "
    "files and modules (a known cause)",
}


def known_causes(
    book: nbformat.NotebookNode, notebook: Path, difference: Difference, built_for: str | None
) -> str | None:
    """The known causes a restore difference matches, as one hint (None: no known cause matches)."""
    section = setup_section_of(book)
    setup = "\n".join(section.cells if section else ())
    causes = []
    if section is not None and difference.cell in section.positions:
        causes.append(HINTS["setup_cell"])
    if "logging" in setup and len(difference.restored) < len(difference.cold):
        causes.append(HINTS["logging"])
    if "after_restore" in setup:
        causes.append(HINTS["after_restore"])
    if difference.cold.count("<image/") != difference.restored.count("<image/") or "backend" in difference.cold:
        causes.append(HINTS["figures"])
    if SEEDING.search(setup):
        causes.append(HINTS["seeding"])
    if ENVIRONMENT.search(setup):
        causes.append(HINTS["environment"])
    if built_for and Path(built_for).parent != notebook.parent:
        causes.append(HINTS["folder"].format(notebook=built_for))
    return "; or ".join(causes) or None


async def _executed(
    notebook: Path, cold: bool, folder: Path, number: int, timeout: float, config: Config | None
) -> tuple[RunSummary, nbformat.NotebookNode]:
    """Run the notebook once, every cell even after a failure; return how it started and the executed notebook.

    A restored run that started cold is no restored run: the check cannot compare, and says why.
    """
    output = folder / f"{'cold' if cold else 'restored'}-{number}.ipynb"
    summary = await run_notebook(notebook, cold=cold, output=output, timeout=timeout, allow_errors=True, config=config)
    if not cold and summary.start != "restored":
        raise CheckError(f"the restored run {number + 1} started cold: {summary.reason}")
    return summary, nbformat.read(output, as_version=4)


def ensure_snapshot(notebook: Path, settings: SnapKernelSettings) -> tuple[bool, str | None]:
    """Build the notebook's snapshot when no kernel start would restore one.

    Return whether it built, and the notebook the snapshot a start restores was built for.
    """
    from ..notebook.builder import build_within_limits

    stores = user_stores(settings)
    state = notebook_file_state(stores, notebook, quota_bytes=settings.quota_bytes)
    if state.section is None:
        raise CheckError(f"{notebook.name} has no setup cell: tag one `snapshot` or start it with %%snapshot")
    built = not state.restorable
    if built:
        build_within_limits(notebook, stores[0], state.section, settings)  # as a server's build
        state = notebook_file_state(stores, notebook, quota_bytes=settings.quota_bytes)
    if not state.restorable or state.snapshot is None:
        raise CheckError(f"{notebook.name} would not restore after its build: {state.cold_reason}")
    return built, state.snapshot.labels.get("notebook")


Runs = list[nbformat.NotebookNode]


async def _all_runs(notebook: Path, runs: int, timeout: float, config: Config | None) -> tuple[Runs, Runs]:
    """Run the notebook cold `runs` times, then restored `runs` times; return the executed notebooks."""
    with tempfile.TemporaryDirectory(prefix="snapkernel-check-") as folder:
        cold = [await _executed(notebook, True, Path(folder), number, timeout, config) for number in range(runs)]
        restored = [await _executed(notebook, False, Path(folder), number, timeout, config) for number in range(runs)]
    return [book for _, book in cold], [book for _, book in restored]


def compare(
    result: CheckResult, notebook: Path, cold: Runs, restored: Runs, built_for: str | None, volatile: Sequence[str] = ()
) -> None:
    """Set the result's state and differences: cold runs among themselves first, then each restored run."""
    book = cold[0]
    reference = cell_outputs(book, volatile)
    for other in cold[1:]:
        difference = first_difference(book, reference, cell_outputs(other, volatile))
        if difference is not None:
            difference.hint = COLD_DIFFERS_HINT
            result.state, result.differences = "cold_differs", [difference]
            return
    for other in restored:
        difference = first_difference(book, reference, cell_outputs(other, volatile))
        seen = [(known.cell, known.cold, known.restored) for known in result.differences]
        if difference is not None and (difference.cell, difference.cold, difference.restored) not in seen:
            difference.hint = known_causes(book, notebook, difference, built_for)
            result.differences.append(difference)
    result.state = "different" if result.differences else "equal"


def check_notebook(
    notebook: Path,
    *,
    runs: int = 2,
    settings: SnapKernelSettings | None = None,
    timeout: float = 600,
    volatile: Sequence[str] = (),
) -> CheckResult:
    """Run a notebook cold and restored `runs` times each (building its snapshot first if needed), and compare.

    `settings` are the stores' settings (a server's; default: this process's configuration and environment).
    `volatile` adds regular expressions to blank out before comparing. Never raises for a notebook that cannot
    be checked: the result's state is then "error" and its error says why in one line.
    """
    started = time.perf_counter()
    notebook = Path(notebook).resolve()
    settings = settings or SnapKernelSettings()
    result = CheckResult(str(notebook), "error", runs)
    try:
        if runs < 1:
            raise CheckError(f"runs must be 1 or more, not {runs}")
        notebook_to_run(notebook)  # RunError: one line saying what is wrong with it
        result.built, built_for = ensure_snapshot(notebook, settings)
        cold, restored = run(_all_runs(notebook, runs, timeout, settings.config))
        compare(result, notebook, cold, restored, built_for, volatile)
    except (CheckError, RunError, SnapshotError, NotebookError) as error:
        result.state, result.error = "error", " ".join(str(error).split())
    except OSError as error:  # a full disk, a store that cannot be written: "error", never read as "different"
        result.state, result.error = "error", f"{error.strerror or error}: {error.filename or ''}".rstrip(": ")
    result.elapsed_s = round(time.perf_counter() - started, 3)
    return result


MAX_RUNNING_CHECKS = 2  # each runs kernels one after another; more at once would only slow each other
KEPT_CHECKS = 50  # finished checks a server remembers for GET checks/ID
MAX_RUNS = 10


class ChecksBusy(SnapshotError):
    """The server already runs as many checks as it may: the request is refused (HTTP 429)."""


@dataclass
class BackgroundCheck:
    """One check running in a server thread, and its result once it ends."""

    id: str
    path: str  # the notebook as the client named it
    runs: int
    started: float = field(default_factory=time.time)
    result: CheckResult | None = None

    def to_dict(self) -> CheckAnswer:
        """The check as the REST API answers it: state running until the result is in."""
        result = self.result
        elapsed = result.elapsed_s if result else round(time.time() - self.started, 3)
        return CheckAnswer(
            id=self.id,
            path=self.path,
            state=result.state if result else "running",
            runs=self.runs,
            differences=[difference.to_dict() for difference in result.differences] if result else [],
            error=result.error if result else None,
            built=result.built if result else False,
            elapsed_s=elapsed,
        )


class BackgroundChecks:
    """A server's checks: each in its own thread, off the event loop; the last KEPT_CHECKS are remembered."""

    def __init__(self) -> None:
        self.checks: dict[str, BackgroundCheck] = {}
        self.lock = threading.Lock()

    def start(self, notebook: Path, api_path: str, runs: int, settings: SnapKernelSettings) -> BackgroundCheck:
        """Start checking a notebook in a thread; raise ChecksBusy when MAX_RUNNING_CHECKS already run."""
        with self.lock:
            if sum(check.result is None for check in self.checks.values()) >= MAX_RUNNING_CHECKS:
                raise ChecksBusy(f"{MAX_RUNNING_CHECKS} checks are running already: try again when one has ended")
            check = BackgroundCheck(secrets.token_hex(6), api_path, runs)
            self.checks[check.id] = check
            for old in [key for key, kept in self.checks.items() if kept.result is not None][:-KEPT_CHECKS]:
                del self.checks[old]

        def work() -> None:
            """Run the check; whatever happens, it ends with a result."""
            try:
                check.result = check_notebook(notebook, runs=runs, settings=settings)
            except Exception as error:  # a bug must still end the check, and say what went wrong
                check.result = CheckResult(str(notebook), "error", runs, error=f"the check failed: {error!r}")

        threading.Thread(target=work, daemon=True, name=f"snapkernel-check-{check.id}").start()
        return check
