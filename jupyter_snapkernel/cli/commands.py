"""`jupyter snapkernel`: check the machine and manage snapshots from a terminal."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from snapkernel_engine import Manifest, SnapshotError
from snapkernel_engine.chains import chain_bytes
from snapkernel_engine.diagnostics import Check, cpu_snapshots_work, run_checks
from snapkernel_engine.privileges import detect

from .. import env_names
from ..config import DEFAULT_BUILD_TIMEOUT_S, SnapKernelSettings
from ..notebook.parameters import parameter_value, parameters_problem
from ..notebook.registries import PUSH_FAILED, push_after_build
from ..notebook.setup_section import NotebookError, read_notebook, read_setup_section
from ..notebook.state import refusal, snapshot_summary
from ..paths import default_store_root, open_store, reading_store
from .kernelspecs import add_kernelspec_commands
from .registry import add_registry_commands

if TYPE_CHECKING:
    from ..launch.check import CheckResult
    from ..launch.headless import RunSummary
    from ..notebook.builder import BuildProgress

STATUS_MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "absent": "-"}


def _human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def doctor(args: argparse.Namespace) -> int:
    """Report what snapshots need here; exit 0 when CPU snapshots can work."""
    privileges = detect()
    checks = run_checks(args.store, args.criu, privileges) + shared_root_checks(args.store)
    works = cpu_snapshots_work(checks)
    if args.json:
        report = {**privileges.to_dict(), "cpu_snapshots": works, "checks": [check.to_dict() for check in checks]}
        print(json.dumps(report, indent=2))
    else:
        for check in checks:
            print(f"{STATUS_MARKS[check.status]} {check.name:<12} {check.detail}")
            if check.fix and check.status in ("fail", "warn"):
                print(f"  {'':<12} fix: {check.fix}")
        print("CPU snapshots: " + ("ready" if works else "NOT available (see the failures above)"))
    return 0 if works else 1


def shared_root_checks(store_root: Path) -> list[Check]:
    """One check per shared root the settings name: whether this user's kernels may restore from it, or why not."""
    settings = SnapKernelSettings()
    own = open_store(store_root)
    checks = []
    for root in settings.shared_roots:
        refused = refusal(reading_store(root, own, settings.verify, settings.shared_root_owners), own=False)
        if refused is None:
            checks.append(Check("shared root", "ok", f"{root}: trusted", required=False))
        else:
            fix = "make root its owner, or name its owner in SnapKernelSettings.shared_root_owners"
            checks.append(Check("shared root", "fail", f"{root}: {refused}", fix, required=False))
    return checks


def install_criu(args: argparse.Namespace) -> int:
    """Install CRIU 4.x and pycriu into a Python environment, building CRIU when the system has none that works."""
    from snapkernel_engine.criu_setup import install

    install(args.prefix, args.build_dir, args.grant_group)  # CriuSetupFailed: one line saying what to run instead
    return 0


SPARES_NOTE = "spare kernels live in each jupyter server: its GET /snapkernel/api/snapshots lists them (`spares`)"


def chains_in_order(manifests: list[Manifest]) -> list[tuple[Manifest, int]]:
    """Snapshots oldest first, each restore point right under the one it is incremental to, with its depth."""
    children: dict[str | None, list[Manifest]] = {}
    listed = {manifest.id for manifest in manifests}
    for manifest in manifests:  # one whose parent is not listed is shown as the top of its chain
        children.setdefault(manifest.parent if manifest.parent in listed else None, []).append(manifest)
    ordered: list[tuple[Manifest, int]] = []

    def add(parent: str | None, depth: int) -> None:
        for manifest in children.get(parent, []):
            ordered.append((manifest, depth))
            add(manifest.id, depth + 1)

    add(None, 0)
    return ordered


def list_snapshots(args: argparse.Namespace) -> int:
    """List the store's snapshots, and the entries that are not usable snapshots (`gc` removes those)."""
    store = open_store(args.store)
    manifests, corrupt = store.listing()
    states = {manifest.id: store.condition(manifest) for manifest in manifests}
    if args.stale:
        manifests = [manifest for manifest in manifests if states[manifest.id].state != "ready"]
    if args.json:
        rows = [snapshot_summary(store, manifest) for manifest in manifests]
        rows += [{"id": entry.id, "state": "corrupt", "reason": entry.reason} for entry in corrupt]
        print(json.dumps(rows, indent=2))
        return 0
    if not manifests and not corrupt:
        print(f"no {'stale ' if args.stale else ''}snapshots in {store.root}")
        return 0
    print(f"{'ID':<18}{'CREATED':<34}{'SIZE':>10}  {'CELLS':<7}{'KEY':<18}STATE")
    for manifest, depth in chains_in_order(manifests):
        condition = states[manifest.id]
        shown = condition.state if condition.state == "ready" else f"{condition.state}: {'; '.join(condition.reasons)}"
        shown_id = f"{'  ' * (depth - 1)}└ {manifest.id}" if depth else manifest.id
        labels = manifest.labels
        cells = f"{labels.get('cells', '-')}/{labels.get('setup_cells', labels.get('cells', '-'))}"
        print(
            f"{shown_id:<18}{manifest.created:<34}{_human_size(manifest.size_bytes):>10}  {cells:<7}"
            f"{manifest.key[:16]:<18}{shown}"
        )
    for entry in corrupt:
        print(f"{entry.id:<18}{'-':<34}{'-':>10}  {'-':<7}{'-':<18}corrupt: {entry.reason}")
    if corrupt:
        what = "1 corrupt entry: `jupyter snapkernel gc` removes it" if len(corrupt) == 1 else ""
        print(what or f"{len(corrupt)} corrupt entries: `jupyter snapkernel gc` removes them")
    print(SPARES_NOTE)
    return 0


def remove(args: argparse.Namespace) -> int:
    """Delete snapshots by id."""
    store = open_store(args.store)
    for snapshot_id in args.ids:
        for deleted in store.delete(snapshot_id):
            needed = "" if deleted == snapshot_id else f" (a restore point incremental to {snapshot_id})"
            print(f"deleted {deleted}{needed}")
    return 0


def clean_up(args: argparse.Namespace) -> int:
    """Remove corrupt entries, replaced snapshots and leftovers, then old snapshots, then keep under the quota."""
    store = open_store(args.store)
    # As in the server's settings, a limit of 0 means no limit.
    max_age = args.max_age_days * 86400 if args.max_age_days else None
    deleted = store.clean_up(max_age_s=max_age, quota_bytes=args.quota_bytes or None)
    print(f"deleted {len(deleted)} snapshot(s){': ' + ' '.join(deleted) if deleted else ''}")
    return 0


def build_notebook(args: argparse.Namespace) -> int:
    """Build (or rebuild) the snapshot of a notebook's setup section, showing progress."""
    from ..notebook.builder import build_snapshot, progress_line

    section = read_setup_section(args.notebook)  # NotebookError: one line saying what is wrong with it
    notebook = args.notebook.resolve()
    total = len(section.cells) if section else 0
    started = time.perf_counter()

    def progress(event: BuildProgress) -> None:
        line = progress_line(event, total, verbose=args.verbose)
        if line and not args.quiet:
            print(f"[{time.perf_counter() - started:6.1f}s] {line}", file=sys.stderr)

    if args.check:
        refused = check_before_publishing(notebook, args.timeout)
        if refused is not None:
            return refused
    store = open_store(args.store, shared=args.shared)
    manifest = build_snapshot(
        notebook, store, section=section, progress=progress, timeout=args.timeout, from_top=args.from_top
    )
    chain = store.chain(manifest)
    points = f" with {len(chain) - 1} restore points before it" if len(chain) > 1 else ""
    print(
        f"snapshot {manifest.id}{points}: {_human_size(chain_bytes(chain))}, built in "
        f"{time.perf_counter() - started:.1f} s for {notebook.name}"
    )
    pushed = push_after_build(SnapKernelSettings(), store, manifest)
    if pushed is not None:
        print(pushed)
    return 1 if pushed is not None and pushed.startswith(PUSH_FAILED) else 0


def print_check(result: CheckResult) -> None:
    """Print a check's verdict, then each difference: its cell, both outputs and the hint."""
    name = Path(result.path).name
    verdicts = {
        "equal": f"{name}: restored runs equal cold runs ({result.runs} of each, {result.elapsed_s:.1f} s)",
        "different": f"{name}: restored runs differ from cold runs",
        "cold_differs": f"{name}: cold runs differ too: not a restore difference",
        "error": f"{name}: could not check: {result.error}",
    }
    print(verdicts[result.state])
    for difference in result.differences:
        print(f"  cell {difference.cell + 1}: {difference.source}")
        other = "another cold run" if result.state == "cold_differs" else "restored"
        for label, text in (("cold", difference.cold), (other, difference.restored)):
            print(f"    {label}:")
            print("\n".join(f"      {line}" for line in (text or "(no output)").splitlines()))
        if difference.hint and result.state != "cold_differs":
            print(f"    hint: {difference.hint}")


def check(args: argparse.Namespace) -> int:
    """Run a notebook cold and restored and compare its cells' outputs; exit 0 when they are equal."""
    from ..launch.check import check_notebook

    os.environ[env_names.STORE] = str(args.store)
    if not args.json:
        print(f"checking {args.notebook.name}: {args.runs} cold and {args.runs} restored runs…", file=sys.stderr)
    result = check_notebook(args.notebook, runs=args.runs, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print_check(result)
    return result.exit_code


def check_before_publishing(notebook: Path, build_timeout: float) -> int | None:
    """Build into a private scratch store and check restored against cold runs there.

    Return None when they are equal (then publish), else the exit code after saying why nothing was published.
    The published snapshot is built again from the same cells: the scratch one never leaves its folder.
    """
    from ..launch.check import check_notebook

    print(f"checking {notebook.name} before publishing: cold and restored runs…", file=sys.stderr)
    saved = os.environ.get(env_names.STORE)
    with tempfile.TemporaryDirectory(prefix="snapkernel-check-") as scratch:
        os.environ[env_names.STORE] = str(Path(scratch) / "store")
        try:
            result = check_notebook(notebook, settings=SnapKernelSettings(build_timeout=build_timeout))
        finally:
            if saved is None:
                os.environ.pop(env_names.STORE, None)
            else:
                os.environ[env_names.STORE] = saved
    if result.state == "equal":
        print(f"check: restored runs equal cold runs ({result.elapsed_s:.1f} s); publishing", file=sys.stderr)
        return None
    print_check(result)
    print(
        f"error: {notebook.name} was not published: its check found {result.state.replace('_', ' ')}", file=sys.stderr
    )
    return 1


def _failure_line(notebook: Path, summary: RunSummary) -> str:
    """One line naming the failed cells, their errors, and where the executed notebook is."""
    failed = [
        (f"cell {failure.index + 1} (In [{failure.execution_count or ' '}])", f"{failure.ename}: {failure.evalue}")
        for failure in summary.errors
    ]
    if len(failed) == 1:
        what = f"{failed[0][0]} failed: {failed[0][1]}"
    else:
        what = f"{len(failed)} cells failed: " + "; ".join(f"{cell} {error}" for cell, error in failed)
    where = f"output notebook: {summary.output}" if summary.output else "no output notebook (--output OUT.ipynb)"
    return " ".join(f"{notebook.name}: {what}; {where}".split())  # one line, whatever the error messages hold


def run_headless(args: argparse.Namespace) -> int:
    """Execute a notebook headless, restored when a snapshot matches; exit 1 when a cell failed."""
    from ..launch.headless import RunError, run, run_notebook

    read_notebook(args.notebook)  # NotebookError: one line saying what is wrong with it
    parameters = dict(args.parameters or [])
    problem = parameters_problem(list(parameters))
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    os.environ[env_names.STORE] = str(args.store)
    try:
        summary = run(
            run_notebook(
                args.notebook.resolve(),
                cold=args.cold,
                output=args.output,
                timeout=args.timeout,
                allow_errors=args.allow_errors,
                parameters={name: parameter_value(text) for name, text in parameters.items()},
            )
        )
    except RunError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        how = f"restored from {summary.snapshot}" if summary.start == "restored" else f"cold ({summary.reason})"
        if summary.restored_cells is not None:
            how += f" (a restore point after setup cell {summary.restored_cells} of {summary.setup_cells})"
        timing = f"kernel ready in {summary.kernel_ready_s:.2f} s, total {summary.total_s:.2f} s"
        print(f"{args.notebook.name}: {how}; {timing}")
        if summary.fetched is not None:
            print(f"registry: {summary.fetched}")
    if summary.errors:
        print(_failure_line(args.notebook, summary), file=sys.stderr)
        return 1
    return 0


def bench(args: argparse.Namespace) -> int:
    """Compare cold and restored starts of a notebook."""
    from ..launch.headless import bench_notebook, run

    os.environ[env_names.STORE] = str(args.store)
    read_notebook(args.notebook)  # NotebookError: one line saying what is wrong with it
    notebook = args.notebook.resolve()
    if not args.json:
        print(f"timing {notebook.name}: {args.runs} cold and {args.runs} restored starts…", file=sys.stderr)
    result = run(bench_notebook(notebook, args.runs, spares=args.spares))
    if args.json:
        print(json.dumps(result))
        return 0
    how = "taking kernels restored ahead of time" if args.spares else "restoring at each start"
    print(f"time to the first reply after the setup cells (median; restored: {how}):")
    print(f"  cold      {result['cold_s']:7.2f} s   runs: {', '.join(f'{s:.2f}' for s in result['cold_runs_s'])}")
    print(
        f"  restored  {result['restored_s']:7.2f} s   runs: {', '.join(f'{s:.2f}' for s in result['restored_runs_s'])}"
    )
    print(f"  ratio     {result['ratio']:7.1f}x")
    return 0


OS_ERROR_ADVICE = {
    errno.ENOSPC: "free some disk space (`jupyter snapkernel gc` deletes old snapshots) or use another store (--store)",
    errno.EDQUOT: "free some disk space (`jupyter snapkernel gc` deletes old snapshots) or use another store (--store)",
    errno.EACCES: "check its permissions, or use another store (--store)",
    errno.EPERM: "check its permissions, or use another store (--store)",
    errno.EROFS: "use a store on a writable file system (--store)",
    errno.ENOTDIR: "check the path: a part of it is not a directory",
}


def os_error_line(error: OSError) -> str:
    """An OSError as one line: what failed, on which file, and what to do about it."""
    what = error.strerror or str(error) or type(error).__name__
    where = f": {error.filename}" if error.filename is not None else ""
    advice = OS_ERROR_ADVICE.get(error.errno or 0, "check the path and the disk, then try again")
    return " ".join(f"{what}{where}; {advice}".split())


def non_negative(kind: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse type: a number of `kind` that is 0 or more."""

    def parse(text: str) -> float:
        """Parse one limit; refuse a negative one."""
        try:
            number = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if number < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative: give 0 (no limit) or more")
        return number

    return parse


def positive_int(text: str) -> int:
    """An argparse type: a whole number of 1 or more."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of `jupyter snapkernel`."""
    parser = argparse.ArgumentParser(prog="jupyter snapkernel", description=__doc__)
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="snapshot store root (default: $SNAPKERNEL_STORE or $JUPYTER_DATA_DIR/snapkernel)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    adders = (_add_build_commands, _add_run_commands, _add_machine_commands, _add_store_commands)
    for add_commands in (*adders, add_kernelspec_commands, add_registry_commands):
        add_commands(commands)
    return parser


def _add_build_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`build` and `check`: make a notebook's snapshot, compare its restored runs with cold ones."""
    build_parser_ = commands.add_parser("build", help="build the snapshot of a notebook's setup cells")
    build_parser_.add_argument("notebook", type=Path)
    build_parser_.add_argument(
        "--timeout", type=float, default=DEFAULT_BUILD_TIMEOUT_S, help="seconds the build may take"
    )
    build_parser_.add_argument("--quiet", action="store_true", help="no progress lines")
    build_parser_.add_argument(
        "--verbose",
        action="store_true",
        help="after each snapshot, where its time went: setup cells, quiesce, checks, CRIU dump, hashing, fsync, "
        "publish",
    )
    build_parser_.add_argument(
        "--from-top",
        action="store_true",
        help="run every setup cell, even where a restore point of the first ones still matches",
    )
    build_parser_.add_argument(
        "--shared",
        action="store_true",
        help="publish the snapshot readable by every user (an admin's course snapshot in a shared root)",
    )
    build_parser_.add_argument(
        "--check",
        action="store_true",
        help="first build in a scratch store and run `check` (cold against restored runs); publish only when "
        "they are equal, else exit 1 and publish nothing",
    )
    build_parser_.set_defaults(handler=build_notebook)

    check_parser = commands.add_parser(
        "check",
        help="run a notebook cold and restored and compare every cell's outputs "
        "(exit 0 equal, 1 different, 3 cold runs differ among themselves, 4 could not check)",
    )
    check_parser.add_argument("notebook", type=Path)
    check_parser.add_argument("--runs", type=positive_int, default=2, help="runs of each kind (default 2)")
    check_parser.add_argument("--timeout", type=float, default=600.0, help="seconds each cell may run")
    check_parser.add_argument("--json", action="store_true", help="print the result as JSON")
    check_parser.set_defaults(handler=check)


def _add_run_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`run` and `bench`: execute a notebook headless, time its cold and restored starts."""
    run_parser = commands.add_parser("run", help="execute a notebook headless with a restored kernel")
    run_parser.add_argument("notebook", type=Path)
    run_parser.add_argument("--cold", action="store_true", help="start the kernel cold even if a snapshot matches")
    run_parser.add_argument(
        "--output", type=Path, default=None, help="write the executed notebook here (also when a cell fails)"
    )
    run_parser.add_argument(
        "--allow-errors",
        action="store_true",
        help="run every cell even after one fails (the exit code is 1 all the same)",
    )
    run_parser.add_argument("--timeout", type=float, default=600.0, help="seconds each cell may run")
    run_parser.add_argument(
        "-p",
        "--parameter",
        dest="parameters",
        nargs=2,
        action="append",
        metavar=("NAME", "VALUE"),
        help="set a parameter as papermill does: a cell tagged injected-parameters after the cell tagged parameters "
        "(VALUE is a Python literal, or else text); repeat for more",
    )
    run_parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    run_parser.set_defaults(handler=run_headless)

    bench_parser = commands.add_parser("bench", help="time cold against restored starts of a notebook")
    bench_parser.add_argument("notebook", type=Path)
    bench_parser.add_argument("--runs", type=int, default=5, help="starts of each kind (medians are reported)")
    bench_parser.add_argument(
        "--no-spares",
        dest="spares",
        action="store_false",
        help="restore at every start instead of taking the kernel restored ahead of time (the default)",
    )
    bench_parser.add_argument("--json", action="store_true", help="print the result as JSON")
    bench_parser.set_defaults(handler=bench)


def _add_machine_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`doctor` and `install-criu`: check this machine, install CRIU."""
    doctor_parser = commands.add_parser("doctor", help="check CRIU, privileges, namespaces, store and GPU")
    doctor_parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor_parser.add_argument("--criu", default=None, help="CRIU binary to check")
    doctor_parser.set_defaults(handler=doctor)

    install_criu_parser = commands.add_parser(
        "install-criu", help="install CRIU 4.x and pycriu into this environment (builds CRIU when needed)"
    )
    install_criu_parser.add_argument(
        "--prefix",
        type=Path,
        default=None,
        help="the Python environment to install into: PREFIX/bin/criu and its pycriu (default: this one)",
    )
    install_criu_parser.add_argument(
        "--build-dir",
        type=Path,
        default=None,
        help="where CRIU's source is fetched and built (default: $XDG_CACHE_HOME/snapkernel/criu or "
        "~/.cache/snapkernel/criu)",
    )
    install_criu_parser.add_argument(
        "--grant-group",
        metavar="GROUP",
        default=None,
        help="as root, also give members of GROUP (created when missing) capability mode: a copy of this criu "
        "holding only cap_checkpoint_restore at PREFIX/libexec/snapkernel/criu-cap, root:GROUP 0750",
    )
    install_criu_parser.set_defaults(handler=install_criu)


def _add_store_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`list`, `rm` and `gc`: the snapshots in the store."""
    list_parser = commands.add_parser("list", help="list snapshots")
    list_parser.add_argument("--json", action="store_true", help="print JSON")
    list_parser.add_argument(
        "--stale",
        action="store_true",
        help="only the snapshots that can no longer be restored here, with why (after an upgrade: the course "
        "snapshots of a shared root, with --store, that need a rebuild)",
    )
    list_parser.set_defaults(handler=list_snapshots)

    rm_parser = commands.add_parser("rm", help="delete snapshots")
    rm_parser.add_argument("ids", nargs="+", metavar="ID")
    rm_parser.set_defaults(handler=remove)

    gc_parser = commands.add_parser("gc", help="delete old snapshots and enforce a size quota")
    gc_parser.add_argument(
        "--max-age-days",
        type=non_negative(float),
        default=None,
        help="delete snapshots unused for this long (0: no limit)",
    )
    gc_parser.add_argument(
        "--quota-bytes",
        type=non_negative(int),
        default=None,
        help="keep the store at most this large (0: no limit, as SnapKernelSettings.quota_bytes)",
    )
    gc_parser.set_defaults(handler=clean_up)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `jupyter snapkernel`."""
    args = build_parser().parse_args(argv)
    args.store = args.store or default_store_root()
    try:
        return args.handler(args)
    except NotebookError as error:  # named by the path the user gave
        print(f"error: {error.naming(str(error.path))}", file=sys.stderr)
        return 1
    except SnapshotError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a store that cannot be written, …: one line, no traceback
        print(f"error: {os_error_line(error)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
