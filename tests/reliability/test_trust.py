"""Stores another user could have written are never restored, and folders that are not stores are never touched."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from jupyter_snapkernel.notebook.setup_section import read_setup_section
from snapkernel_engine import SnapshotStore
from tests.helpers import tree_digest
from tests.users import UnixUser

SETUP = ["value = 21"]
SERVER_ENV = {"SNAPKERNEL_AUTO_BUILD": "0", "SNAPKERNEL_SPARE_KERNELS": "0"}
REWRITE_KEY = (
    "import json, sys\npath, key = sys.argv[1:]\nmanifest = json.load(open(path))\n"
    "open(path, 'w').write(json.dumps({**manifest, 'key': key}))"
)


def planted_hook(scratch: Path) -> list[str]:
    """Setup cells that register an `after_restore` hook writing a file named after whoever it runs as."""
    return [
        "import os\nfrom jupyter_snapkernel import after_restore\n\n@after_restore\ndef planted():\n"
        f"    open(os.path.join({str(scratch)!r}, f'hook-ran-as-{{os.getuid()}}'), 'w').write('planted')\n\n"
        "value = 21"
    ]


def chown_tree(path: Path, user: UnixUser) -> None:
    """Give a folder and everything in it to a user."""
    for item in [path, *path.rglob("*")]:
        os.chown(item, user.uid, user.gid)


def test_a_store_another_user_planted_is_never_restored(make_user: Any, user_server: Any, public_dir: Path) -> None:
    """The shared-scratch attack: B makes A's store folder first and plants a snapshot keyed on A's setup there."""
    victim, attacker = make_user(), make_user()
    scratch = public_dir / "scratch"
    scratch.mkdir()
    scratch.chmod(0o1777)
    planted_store = scratch / victim.name
    planted = attacker.write_notebook("planted.ipynb", planted_hook(scratch), marked=0)
    built = attacker.jupyter("--store", str(planted_store), "build", "--shared", "--quiet", str(planted))
    assert built.returncode == 0, built.stdout + built.stderr
    notebook = victim.write_notebook("work/analysis.ipynb", SETUP, marked=0, after=["print(value * 2)"])
    key = read_setup_section(notebook).setup_hash
    [manifest] = planted_store.glob("snapshots/*/manifest.json")
    rewritten = attacker.run("python3", "-c", REWRITE_KEY, str(manifest), key)
    assert rewritten.returncode == 0, rewritten.stderr
    # Only the store's owner stands between the victim and the planted snapshot.
    assert [found.key for found in SnapshotStore(planted_store, trusted_owners={attacker.uid}).list()] == [key]

    server = user_server(victim, notebook.parent, {**SERVER_ENV, "SNAPKERNEL_STORE": str(scratch / "{username}")})
    start = server.start_session("analysis.ipynb")
    assert start["start"] == "cold", start
    reason = start["reason"]
    assert reason.startswith(
        f"your snapshot store is not trusted: its folder belongs to uid {attacker.uid} ({attacker.name}), "
        f"not to uid 0 (root) or uid {victim.uid} ({victim.name}); snapkernel restores only what no one else "
        "could have written"
    ), reason
    assert str(scratch) not in reason and "\n" not in reason
    status = server.request("GET", "snapkernel/api/status", params={"path": "analysis.ipynb"}).json()
    assert (status["state"], status["reason"]) == ("failed", reason), status
    assert list(scratch.glob("hook-ran-as-*")) == [], "the planted hook never runs"
    assert [path.name for path in planted_store.glob("snapshots/*")] == [manifest.parent.name], "nothing was tidied"


def test_a_shared_root_owned_by_an_ordinary_user_is_refused_unless_named(
    make_user: Any, user_server: Any, public_dir: Path
) -> None:
    """A TA's course snapshots: refused (with the reason, also in `doctor`) until the admin names the TA."""
    assistant, student = make_user(), make_user()
    course = public_dir / "course"
    course.mkdir(mode=0o755)
    chown_tree(course, assistant)
    original = assistant.write_notebook("week1.ipynb", SETUP, marked=0)
    shared_root = course / "snapshots"
    built = assistant.jupyter("--store", str(shared_root), "build", "--shared", "--quiet", str(original))
    assert built.returncode == 0, built.stdout + built.stderr
    [manifest] = shared_root.glob("snapshots/*/manifest.json")
    notebook = student.write_notebook("course/week1.ipynb", SETUP, marked=0, after=["print(value * 2)"])
    env = {**SERVER_ENV, "SNAPKERNEL_SHARED_ROOTS": str(shared_root)}

    refused = user_server(student, notebook.parent, env).start_session("week1.ipynb")
    assert refused["start"] == "cold", refused
    why = f"a shared root is not trusted: its folder belongs to uid {assistant.uid} ({assistant.name})"
    assert why in refused["reason"] and "SnapKernelSettings.shared_root_owners" in refused["reason"], refused
    doctor = student.jupyter("doctor", env=env).stdout
    assert f"✗ shared root  {shared_root}: {why}" in doctor, doctor

    named = {**env, "SNAPKERNEL_SHARED_ROOT_OWNERS": assistant.name}
    allowed = user_server(student, notebook.parent, named).start_session("week1.ipynb")
    assert (allowed["start"], allowed["snapshot"]) == ("restored", manifest.parent.name), allowed
    assert f"✓ shared root  {shared_root}: trusted" in student.jupyter("doctor", env=named).stdout


USERS_FILES = {
    "work/thesis/ch1.tex": "\\chapter{Introduction}\n",
    "work/0123456789ab-01234567/data.csv": "a,b\n1,2\n",  # named like a restore's work folder
    "staging/0123456789ab.tmp/draft.txt": "draft\n",  # named like a build's staging folder
    "staging/notes.md": "# notes\n",
    "snapshots/0123456789ab/manifest.json": '{"photos": 3}\n',  # named like a snapshot
    "snapshots/holiday.jpg": "not really a photo\n",
    "verified/0123456789ab.json": '{"checked": true}\n',  # named like a hash record
    "verified/certificate.pdf": "%PDF-1.4\n",
}


def test_a_store_pointed_at_a_home_folder_leaves_every_file_in_place(make_user: Any, user_server: Any) -> None:
    """`--store ~` with work/, staging/, snapshots/ and verified/ of the user's own: gc, rm, list and a server
    start refuse in one line, and every file stays, byte for byte."""
    user = make_user()
    for relative, text in USERS_FILES.items():
        (user.home / relative).parent.mkdir(parents=True, exist_ok=True)
        (user.home / relative).write_text(text)
    for folder in ("work", "staging", "snapshots", "verified"):
        chown_tree(user.home / folder, user)
    before = {folder: tree_digest(user.home / folder) for folder in ("work", "staging", "snapshots", "verified")}

    for command in (["gc"], ["gc", "--quota-bytes", "0"], ["gc", "--max-age-days", "0"], ["rm", "0123456789ab"],
                    ["list"]):  # fmt: skip
        result = user.jupyter("--store", str(user.home), *command)
        assert result.returncode == 1 and result.stderr.startswith(
            "error: the store's folder is not a snapkernel store: it holds "
        ), (command, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and "marker; point the store at a new or empty folder" in (
            result.stderr
        ), result.stderr

    server = user_server(user, user.home, {"SNAPKERNEL_STORE": str(user.home)})
    deadline = time.monotonic() + 60
    while "could not tidy the snapshot store" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    assert "is not a snapkernel store" in server.log()
    listing = server.request("GET", "snapkernel/api/snapshots")  # the user's files are not corrupt snapshots
    assert listing.status_code == 409, listing.text
    assert json.loads(listing.text)["message"].startswith("the store's folder is not a snapkernel store: it holds ")
    server.stop()
    after = {folder: tree_digest(user.home / folder) for folder in ("work", "staging", "snapshots", "verified")}
    assert after == before
    assert not (user.home / ".snapkernel-store").exists()
    assert json.loads((user.home / "snapshots/0123456789ab/manifest.json").read_text()) == {"photos": 3}
