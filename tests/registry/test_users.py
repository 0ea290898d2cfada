"""A course snapshot built and pushed by root, pulled and restored by an ordinary user (useradd): it runs as the
user, its credentials rewritten as for a shared root's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers import AFTER_SETUP, SETUP_CELLS, write_notebook
from tests.registry_server import Registry

AFTER = [AFTER_SETUP, "print(os.getuid(), os.getgid(), os.environ['HOME'])"]


def test_a_course_snapshot_pushed_by_root_restores_as_the_pulling_user(
    registry: Registry, make_user: Any, system_prefix: Path
) -> None:
    """root builds and pushes from the machine-wide install; a user not in the snapkernel group (user-namespace
    mode) pulls it with its own credentials file and runs the notebook: restored, as that user."""
    course = Path(tempfile.mkdtemp(prefix="sk-registry-course-", dir="/var/tmp"))
    try:
        course.chmod(0o755)  # CRIU enters the folder a kernel ran in at restore: users must be able to
        material = course / "material"
        material.mkdir()
        material.chmod(0o750)  # its group decides who may enter it (and restore what ran in it)
        original = write_notebook(course / "material" / "week1.ipynb", SETUP_CELLS, marked=1, after=AFTER)
        jupyter = str(system_prefix / "bin" / "jupyter")
        clean = ["env", "-i", "PATH=/usr/bin:/bin", "HOME=/var/empty", *(f"{k}={v}" for k, v in registry.env().items())]
        built = subprocess.run(
            [*clean, "SNAPKERNEL_PUSH_ON_BUILD=1", f"SNAPKERNEL_REGISTRIES={registry.repository('course/users')}",
             jupyter, "snapkernel", "--store", str(course / "store"), "build", "--quiet", str(original)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert built.returncode == 0 and "pushed snapshot" in built.stdout, built.stdout + built.stderr
        snapshot = built.stdout.split()[1].rstrip(":")

        user = make_user(in_group=False)
        os.chown(material, 0, user.gid)
        notebook = user.write_notebook("course/week1.ipynb", SETUP_CELLS, marked=1, after=AFTER)
        for name in ("ca.pem", "auth.json"):
            source = registry.ca_file if name == "ca.pem" else registry.auth_file
            shutil.copy(source, user.home / name)
            os.chown(user.home / name, user.uid, user.gid)
        env = {"REQUESTS_CA_BUNDLE": str(user.home / "ca.pem"), "REGISTRY_AUTH_FILE": str(user.home / "auth.json")}
        pulled = user.jupyter("pull", "--notebook", str(notebook), registry.repository("course/users"), env=env)
        assert pulled.returncode == 0, pulled.stdout + pulled.stderr
        env |= {"SNAPKERNEL_SPARE_KERNELS": "0", "SNAPKERNEL_AUTO_BUILD": "0"}
        ran = user.jupyter("run", "--json", str(notebook), env=env)
        assert ran.returncode == 0, ran.stderr
        summary = json.loads(ran.stdout.splitlines()[-1])
        assert (summary["start"], summary["snapshot"]) == ("restored", snapshot), summary
        [manifest] = [m for m in user.manifests() if m["id"] == snapshot]
        assert (user.store / "snapshots" / snapshot).stat().st_uid == user.uid
        assert manifest["id"] == snapshot
        printed = user.run(
            str(system_prefix / "bin" / "jupyter"), "snapkernel", "run", str(notebook), "--output",
            str(user.home / "out.ipynb"), env=env,
        )  # fmt: skip
        assert printed.returncode == 0, printed.stderr
        book = json.loads((user.home / "out.ipynb").read_text())
        last = "".join("".join(output.get("text", "")) for output in book["cells"][-1]["outputs"])
        assert last == f"{user.uid} {user.gid} {user.home}\n"

        # The folder it was built in, out of the user's reach with its mode unchanged (the group is root's
        # again): CRIU would fail to enter it, so the start says why instead.
        os.chown(material, 0, 0)
        refused = user.jupyter("run", "--json", str(notebook), env=env)
        summary = json.loads(refused.stdout.splitlines()[-1])
        assert summary["start"] == "cold", summary
        assert f"this user cannot enter the folder it ran in ({material})" in summary["reason"], summary
    finally:
        shutil.rmtree(course, ignore_errors=True)
