"""`jupyter snapkernel doctor` reports this machine ready for CPU snapshots, and its fixes name commands that exist."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapkernel_engine import privileges
from snapkernel_engine.criu_setup import CriuSetupFailed, capability_criu_path, install, prefix_python

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
    assert report["limits"] == [], "root restores keep host credentials: no limit, setuid programs work"
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
    assert "fix: run `jupyter snapkernel install-criu` to build CRIU 4.x" in result.stdout


def test_a_failing_criu_check_names_the_criu_doctor_found(tmp_path: Path) -> None:
    fake = tmp_path / "criu"
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'Version: 4.2.1'; exit 0; }\necho 'no feature' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    result = doctor("--json", "--criu", str(fake), store=tmp_path / "store")
    assert result.returncode == 1, result.stdout + result.stderr
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["criu check"]["fix"] == f"see the output of `{fake} check` for the missing kernel feature"
    assert checks["pycriu"]["fix"] == f"check `{fake} check`"


def test_the_grant_fix_names_install_criu_with_the_group() -> None:
    expected = f"{JUPYTER} snapkernel install-criu --grant-group {privileges.SNAPKERNEL_GROUP}"
    assert expected == privileges.GRANT_COMMAND
    assert JUPYTER.is_file()


def test_the_grant_writes_where_capability_mode_looks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(privileges.CAP_CRIU_ENV_VAR, raising=False)
    here = Path(sys.prefix)
    assert capability_criu_path(here, prefix_python(here)) == privileges.capability_criu()


def test_grant_group_refuses_a_user_that_is_not_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(CriuSetupFailed, match=r"--grant-group needs root: .*run `sudo .* --grant-group staff`"):
        install(tmp_path, tmp_path / "build", grant_group="staff")
    assert list(tmp_path.iterdir()) == []
