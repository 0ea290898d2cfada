"""Time `jupyter snapkernel bench` as root and as ordinary users in capability and user-namespace mode.

Run as root after `make system-install`: it creates two users with useradd (one in group
snapkernel), runs the same notebook's build and bench as each of them and as root, all from the
machine-wide install, prints a table, and removes the users.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_as(user: str | None, prefix: Path, home: Path, args: list[str], cwd: Path) -> str:
    """Run `jupyter snapkernel ARGS` from the install as `user` (None: root) with a clean environment; return stdout."""
    env = ["env", "-i", f"HOME={home}", f"PATH={prefix / 'bin'}:/usr/bin:/bin", "LANG=C.UTF-8"]
    if user is None:
        env.append(f"SNAPKERNEL_STORE={home / 'store'}")
    command = [*(["runuser", "-u", user, "--"] if user else []), *env, str(prefix / "bin" / "jupyter"), "snapkernel"]
    result = subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(args)} as {user or 'root'} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def measure(user: str | None, prefix: Path, home: Path, notebook: Path, runs: int) -> dict[str, object]:
    """Build the notebook's snapshot, then bench it with and without spare kernels."""
    mode = json.loads(run_as(user, prefix, home, ["doctor", "--json"], notebook.parent))["mode"]
    run_as(user, prefix, home, ["build", "--quiet", str(notebook)], notebook.parent)
    spares = json.loads(
        run_as(user, prefix, home, ["bench", str(notebook), "--runs", str(runs), "--json"], notebook.parent)
    )
    direct = json.loads(
        run_as(
            user, prefix, home, ["bench", str(notebook), "--runs", str(runs), "--no-spares", "--json"], notebook.parent
        )
    )
    return {
        "mode": mode,
        "cold_s": spares["cold_s"],
        "spare_s": spares["restored_s"],
        "spare_ratio": spares["ratio"],
        "restore_s": direct["restored_s"],
        "restore_ratio": direct["ratio"],
    }


def main() -> int:
    """Measure every mode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefix", type=Path, default=Path("/opt/snapkernel"), help="the machine-wide install")
    parser.add_argument("--notebook", type=Path, default=REPO / "examples" / "torch_setup.ipynb")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: it creates users and runs their benches")
    users = {"capability": f"skb{secrets.token_hex(3)}", "user-namespace": f"skb{secrets.token_hex(3)}"}
    root_home = Path(tempfile.mkdtemp(prefix="sk-bench-root-", dir="/var/tmp"))
    rows = []
    try:
        subprocess.run(["useradd", "-m", "-G", "snapkernel", users["capability"]], check=True)
        subprocess.run(["useradd", "-m", users["user-namespace"]], check=True)
        shutil.copy(args.notebook, root_home / args.notebook.name)
        rows.append(measure(None, args.prefix, root_home, root_home / args.notebook.name, args.runs))
        for name in users.values():
            account = pwd.getpwnam(name)
            notebook = Path(account.pw_dir) / args.notebook.name
            shutil.copy(args.notebook, notebook)
            os.chown(notebook, account.pw_uid, account.pw_gid)
            rows.append(measure(name, args.prefix, Path(account.pw_dir), notebook, args.runs))
    finally:
        for name in users.values():
            subprocess.run(["pkill", "-KILL", "-u", name], check=False)
            subprocess.run(["userdel", "--remove", name], capture_output=True, check=False)
        shutil.rmtree(root_home, ignore_errors=True)
    if args.json:
        print(json.dumps(rows))
        return 0
    root = rows[0]
    print(f"{args.notebook.name}, medians of {args.runs} (seconds to the first reply after the setup cells):")
    print(
        f"{'mode':<16}{'cold':>8}{'spare':>8}{'ratio':>8}{'restore':>9}{'ratio':>8}{'spare/root':>12}{'restore/root':>14}"
    )
    for row in rows:
        print(
            f"{row['mode']:<16}{row['cold_s']:>8.2f}{row['spare_s']:>8.2f}{row['spare_ratio']:>7.1f}x"
            f"{row['restore_s']:>9.2f}{row['restore_ratio']:>7.1f}x"
            f"{row['spare_s'] / root['spare_s']:>11.2f}x{row['restore_s'] / root['restore_s']:>13.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
