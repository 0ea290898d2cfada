#!/usr/bin/env bash
# Install snapkernel for every user of this machine (as root): a venv in $PREFIX made from an
# interpreter all users can run, then `jupyter snapkernel install-criu --grant-group`: CRIU 4.x with
# pycriu, and a criu copy holding only cap_checkpoint_restore that only members of group
# $SNAPKERNEL_GROUP may run. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

PREFIX="${PREFIX:-/opt/snapkernel}"
GROUP="${SNAPKERNEL_GROUP:-snapkernel}"
# Debian's interpreter: readable by everyone (a pyenv build under /root is not).
PYTHON="${SYSTEM_PYTHON:-/usr/bin/python3}"
EXTRAS="${EXTRAS:-examples,hub}"

log() { printf '[system-install] %s\n' "$*"; }

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

if [ ! -x "$PREFIX/bin/python" ]; then
  log "creating the venv $PREFIX from $PYTHON"
  "$PYTHON" -m venv "$PREFIX"
  "$PREFIX/bin/python" -m pip install -q --upgrade pip setuptools wheel hatchling "hatch-jupyter-builder>=0.5" "jupyterlab>=4.2,<5"
fi
if ! runuser -u nobody -- "$PREFIX/bin/python" -c pass 2>/dev/null; then
  log "$PREFIX/bin/python cannot be run by other users: set SYSTEM_PYTHON to an interpreter everyone can read"
  exit 1
fi

deps_stamp="$(printf '%s' "$EXTRAS" | cat - pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat "$PREFIX/.snapkernel-deps" 2>/dev/null)" != "$deps_stamp" ]; then
  log "installing snapkernel[$EXTRAS] and its dependencies into $PREFIX"
  "$PREFIX/bin/python" -m pip install -q --no-build-isolation ".[$EXTRAS]"
  echo "$deps_stamp" >"$PREFIX/.snapkernel-deps"
fi
code_stamp="$(find engine jupyter_snapkernel share jupyter-config install.json labextension/src -type f \
  -not -path '*/__pycache__/*' -not -path 'jupyter_snapkernel/labextension/*' | sort | xargs sha256sum | sha256sum | cut -c1-16)"
if [ "$(cat "$PREFIX/.snapkernel-code" 2>/dev/null)" != "$code_stamp" ]; then
  log "installing snapkernel's code into $PREFIX"
  "$PREFIX/bin/python" -m pip install -q --no-build-isolation --no-deps --force-reinstall .
  echo "$code_stamp" >"$PREFIX/.snapkernel-code"
fi

# CRIU and the one privileged grant (group $GROUP, PREFIX/libexec/snapkernel/criu-cap): the shipped installer's.
"$PREFIX/bin/jupyter" snapkernel install-criu --prefix "$PREFIX" --build-dir build/criu --grant-group "$GROUP"

log "done: users in group $GROUP get capability mode, the others user-namespace mode"
log "check with: $PREFIX/bin/jupyter snapkernel doctor   (as the user)"
log "add a user to the group with: usermod -aG $GROUP USER"
