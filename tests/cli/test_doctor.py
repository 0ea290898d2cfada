"""`jupyter snapkernel doctor` reports this machine ready for CPU snapshots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

JUPYTER = Path(sys.executable).with_name("jupyter")


def doctor(*args: str, store: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JUPYTER), "snapkernel", "--store", str(store), "doctor", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_exits_zero_here(tmp_path: Path) -> None:
    result = doctor(store=tmp_path / "store")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CPU snapshots: ready" in result.stdout


def test_doctor_json_lists_every_check(tmp_path: Path) -> None:
    result = doctor("--json", store=tmp_path / "store")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cpu_snapshots"] is True
    assert report["mode"] == "root", "the tests run as root"
    checks = {check["name"]: check for check in report["checks"]}
    assert set(checks) == {
        "criu",
        "criu check",
        "pycriu",
        "mode",
        "namespaces",
        "userfaultfd",
        "store",
        "gpu",
    }
    assert "CRIU 4." in checks["criu"]["detail"]
    assert checks["gpu"]["status"] in {"ok", "warn", "absent"}
    assert all(check["status"] == "ok" for check in checks.values() if check["required"])


def test_doctor_fails_with_a_fix_hint_for_a_bad_criu(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    fake.chmod(0o755)
    result = doctor("--criu", str(fake), store=tmp_path / "store")
    assert result.returncode == 1
    assert "older than 4.0" in result.stdout
    assert "fix: run `make setup`" in result.stdout
