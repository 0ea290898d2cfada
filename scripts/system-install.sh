#!/usr/bin/env bash
# Install snapkernel for every user of this machine (as root): a venv in $PREFIX made from an
# interpreter all users can run, then `jupyter snapkernel install-criu --grant-group`: CRIU 4.x with
# pycriu, and a criu copy holding only cap_checkpoint_restore that only members of group
# $SNAPKERNEL_GROUP may run. Idempotent. What pip and the CRIU installer print goes to
# $PREFIX/snapkernel-install.log, shown only when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

PREFIX="${PREFIX:-/opt/snapkernel}"
GROUP="${SNAPKERNEL_GROUP:-snapkernel}"
# Debian's interpreter: readable by everyone (a pyenv build under /root is not).
PYTHON="${SYSTEM_PYTHON:-/usr/bin/python3}"
EXTRAS="${EXTRAS:-examples,hub}"
LOG="$PREFIX/snapkernel-install.log"

log() { printf '[system-install] %s\n' "$*"; }

# Run a command with its output (pip's, the build backends', the CRIU installer's) appended to $LOG; when it
# fails, show the end of that output and where the whole log is.
quietly() {
  local status=0 start
  printf '\n$ %s\n' "$*" >>"$LOG"
  start=$(($(wc -l <"$LOG") + 1))
  "$@" >>"$LOG" 2>&1 || status=$?
  if [ "$status" != 0 ]; then
    tail -n +"$start" "$LOG" | tail -n 40 | sed 's/^/  | /' >&2
    log "failed (exit $status): $*" >&2
    log "its whole output: $LOG" >&2
    exit "$status"
  fi
}

[ "$(id -u)" = 0 ] || { log "run as root: it creates group $GROUP and gives a criu copy a file capability"; exit 1; }

missing=()
for pkg in python3-venv util-linux; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mkdir -p "$PREFIX"
(umask 077 && : >"$LOG") && chmod 600 "$LOG"  # this run's output only, for root alone

if [ ! -x "$PREFIX/bin/python" ]; then
  log "creating the venv $PREFIX from $PYTHON"
  quietly "$PYTHON" -m venv "$PREFIX"
  quietly "$PREFIX/bin/python" -m pip install -q --upgrade pip setuptools wheel hatchling "hatch-jupyter-builder>=0.5" "jupyterlab>=4.2,<5"
fi
if ! runuser -u nobody -- "$PREFIX/bin/python" -c pass 2>/dev/null; then
  log "$PREFIX/bin/python cannot be run by other users: set SYSTEM_PYTHON to an interpreter everyone can read"
  exit 1
fi

deps_stamp="$(printf '%s' "$EXTRAS" | cat - pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$PREFIX/.snapkernel-deps" 2>/dev/null)" != "$deps_stamp" ]; then
  log "installing snapkernel[$EXTRAS] and its dependencies into $PREFIX"
  quietly "$PREFIX/bin/python" -m pip install -q --no-build-isolation ".[$EXTRAS]"
  echo "$deps_stamp" >"$PREFIX/.snapkernel-deps"
fi
code_stamp="$(find engine jupyter_snapkernel share jupyter-config install.json labextension/src -type f \
  -not -path '*/__pycache__/*' -not -path 'jupyter_snapkernel/labextension/*' | sort | xargs sha256sum | sha256sum | cut -c1-16)"
if [ "$(cat "$PREFIX/.snapkernel-code" 2>/dev/null)" != "$code_stamp" ]; then
  log "installing snapkernel's code into $PREFIX"
  quietly "$PREFIX/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall .
  echo "$code_stamp" >"$PREFIX/.snapkernel-code"
fi

# CRIU and the one privileged grant (group $GROUP, PREFIX/libexec/snapkernel/criu-cap): the shipped installer's.
log "checking CRIU 4 and pycriu in $PREFIX and the grant to group $GROUP (building CRIU, when needed, takes minutes)"
quietly "$PREFIX/bin/jupyter" snapkernel install-criu --prefix "$PREFIX" --build-dir build/criu --grant-group "$GROUP"

# What is installed, where, and for whom.
version="$("$PREFIX/bin/python" -c 'from importlib.metadata import version; print(version("jupyter-snapkernel"))')"
python_version="$("$PREFIX/bin/python" -c 'import platform; print(platform.python_version())')"
criu_version="$("$PREFIX/bin/criu" --version | awk '/^Version:/ {version = $2} END {print version}')"
cap_criu="$PREFIX/libexec/snapkernel/criu-cap"
members="$(getent group "$GROUP" | cut -d: -f4 | sed 's/,/, /g' || true)"
server="$PREFIX/bin/jupyter lab"
if [ -x "$PREFIX/bin/jupyterhub-singleuser" ]; then
  server="$server (or a JupyterHub spawns $PREFIX/bin/jupyterhub-singleuser)"
fi
log "installed snapkernel $version [$EXTRAS] into $PREFIX (Python $python_version, from $PYTHON)"
log "installed CRIU ${criu_version:-?} at $PREFIX/bin/criu; for group $GROUP, a copy with cap_checkpoint_restore" \
  "at $cap_criu ($(stat -c '%U:%G %a' "$cap_criu" 2>/dev/null || echo missing))"
log "users in group $GROUP (${members:-none yet}) get capability mode, every other user user-namespace mode;" \
  "each runs $server"
log "check with: $PREFIX/bin/jupyter snapkernel doctor   (as the user)"
log "add a user to the group with: usermod -aG $GROUP USER"
log "what pip and the CRIU installer printed: $LOG"
