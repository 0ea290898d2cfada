"""`jupyter snapkernel push` and `pull`: snapshots to and from an OCI registry."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from snapkernel_engine import SnapshotNotFound, SnapshotStore
from snapkernel_engine.registry.artifact import KEY
from snapkernel_engine.registry.client import Reference, RegistryError
from snapkernel_engine.registry.transfer import Found, find_snapshot, push_snapshot

from ..config import SnapKernelSettings
from ..launch.registry_fetch import keep_after_pull, quota_refusal
from ..notebook.registries import find_in_registries, pull_into, transfer_line
from ..notebook.setup_section import read_setup_section
from ..paths import open_store

SETUP_KEY = re.compile(r"[0-9a-f]{64}")


def push(args: argparse.Namespace) -> int:
    """Push a snapshot, with the restore points it needs, to a repository."""
    store = open_store(args.store)
    reference = Reference.parse(args.reference, plain_http=args.plain_http)
    progress = None if args.quiet else print
    pushed = push_snapshot(store, args.id, reference, progress)
    print(transfer_line("pushed", pushed, reference))
    print(f"digest {pushed.digest}")
    return 0


def pull(args: argparse.Namespace) -> int:
    """Pull a snapshot by reference, or the one of a notebook's setup that this machine can restore."""
    store = open_store(args.store)
    reference = Reference.parse(args.reference, plain_http=args.plain_http)
    if args.notebook is not None:
        found, key = _notebook_match(args.notebook, reference, store)
    else:
        asked = find_snapshot(reference)
        if asked is None:
            raise SnapshotNotFound(f"{reference} holds no snapshot")
        found = asked
        key = args.key or found.artifact.annotations.get(KEY, "")
    if not SETUP_KEY.fullmatch(key):
        raise RegistryError(f"{reference}: its setup key {key!r} is not a sha256")
    settings = SnapKernelSettings()
    too_large = quota_refusal(settings, found.artifact.chain_size)
    if too_large is not None:
        raise RegistryError(f"{found.reference} is not fetched: {too_large}")
    progress = None if args.quiet else print
    pulled = pull_into(store, found, key, progress)
    print(transfer_line("pulled", pulled, reference))
    problem = keep_after_pull(settings, store, pulled.snapshot)
    if problem is not None:
        print(problem, file=sys.stderr)
    return 0


def _notebook_match(notebook: Path, repository: Reference, store: SnapshotStore) -> tuple[Found, str]:
    """The snapshot of a notebook's setup in a repository that this machine could restore, and its setup key."""
    section = read_setup_section(notebook)
    if section is None:
        raise SnapshotNotFound(f"{notebook.name} has no setup cell: tag one `snapshot` or start it with %%snapshot")
    if repository.tag or repository.digest:
        raise RegistryError(f"with --notebook, name a repository without a tag or digest, not {repository}")
    match = find_in_registries([str(repository)], section.setup_hash, store)
    if match.found is None and match.passed_over:
        raise RegistryError(match.passed_over[0])
    if match.found is None:
        raise SnapshotNotFound(f"{repository} holds no snapshot of {notebook.name}'s setup for this machine")
    return match.found, section.setup_hash


def add_registry_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`push` and `pull`."""
    plain_http = {"action": "store_true", "help": "plain HTTP, only for a registry on the loopback address"}
    push_parser = commands.add_parser(
        "push", help="push a snapshot (with the restore points it needs) to an OCI repository"
    )
    push_parser.add_argument("id", metavar="ID", help="the snapshot (`jupyter snapkernel list` shows them)")
    push_parser.add_argument(
        "reference", metavar="REF", help="HOST[:PORT]/REPOSITORY[:TAG]; it is also tagged by its setup key and hardware"
    )
    push_parser.add_argument("--plain-http", **plain_http)  # type: ignore[arg-type]
    push_parser.add_argument("--quiet", action="store_true", help="no progress lines")
    push_parser.set_defaults(handler=push)

    pull_parser = commands.add_parser("pull", help="fetch a snapshot from an OCI repository into the store")
    pull_parser.add_argument(
        "reference", metavar="REF", help="HOST[:PORT]/REPOSITORY:TAG or @DIGEST; with --notebook, the repository"
    )
    pull_parser.add_argument(
        "--notebook", type=Path, default=None, help="fetch the snapshot of this notebook's setup for this machine"
    )
    pull_parser.add_argument("--key", default=None, help=argparse.SUPPRESS)  # a start's background fetch names it
    pull_parser.add_argument("--plain-http", **plain_http)  # type: ignore[arg-type]
    pull_parser.add_argument("--quiet", action="store_true", help="no progress lines")
    pull_parser.set_defaults(handler=pull)
