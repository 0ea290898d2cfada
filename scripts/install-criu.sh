#!/usr/bin/env bash
# Provide CRIU >= 4.0 and pycriu: the system's CRIU when new enough and `criu check` passes,
# otherwise a build of Debian's source package into build/criu (binary lands in .venv/bin).
set -euo pipefail

CRIU_VERSION="${CRIU_VERSION:-4.2.1}"
VENV="${VENV:-.venv}"
BUILD="build/criu"
SRC="$BUILD/criu-$CRIU_VERSION"
BUILD_DEPS="build-essential libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev \
libnl-3-dev libprotobuf-c-dev libprotobuf-dev pkg-config protobuf-c-compiler protobuf-compiler \
uuid-dev python3-protobuf iproute2 xz-utils"

log() { printf '[install-criu] %s\n' "$*"; }

criu_ok() {
  local bin="$1" version
  [ -x "$bin" ] || return 1
  version="$("$bin" --version 2>/dev/null | sed -n 's/^Version: //p')"
  [ "${version%%.*}" -ge 4 ] 2>/dev/null || return 1
  "$bin" check >/dev/null 2>&1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_ready=""
apt_update_once() {
  [ -n "$apt_ready" ] && return 0
  as_root apt-get update -qq
  apt_ready=1
}

install_build_deps() {
  local missing=()
  for pkg in $BUILD_DEPS; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  log "installing build dependencies: ${missing[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

fetch_source() {
  [ -d "$SRC" ] && return 0
  mkdir -p "$BUILD"
  local tarball
  tarball="$(ls "$BUILD"/criu_"$CRIU_VERSION".orig.tar.* 2>/dev/null | head -n1 || true)"
  if [ -z "$tarball" ]; then
    # Source lines only: binary lines from a newer suite would upgrade libc on Debian 12.
    local srclist=/etc/apt/sources.list.d/snapkernel-criu-src.sources
    if [ ! -f "$srclist" ]; then
      log "adding a deb-src entry for Debian's criu source package"
      printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
        as_root tee "$srclist" >/dev/null
      apt_ready=""
    fi
    apt_update_once
    (cd "$BUILD" && apt-get source --download-only "criu=$CRIU_VERSION-1" >/dev/null 2>&1 || true)
    tarball="$(ls "$BUILD"/criu_"$CRIU_VERSION".orig.tar.* 2>/dev/null | head -n1 || true)"
    [ -n "$tarball" ] || { log "could not download criu_$CRIU_VERSION.orig.tar.*"; exit 1; }
  fi
  log "unpacking $tarball"
  tar -C "$BUILD" -xf "$tarball"
}

build_criu() {
  if [ ! -x "$SRC/criu/criu" ] || [ ! -f "$SRC/lib/pycriu/rpc_pb2.py" ]; then
    log "building CRIU $CRIU_VERSION (make criu lib)"
    make -C "$SRC" -j"$(nproc)" criu lib >"$BUILD/build.log" 2>&1 ||
      { tail -n 40 "$BUILD/build.log"; exit 1; }
  fi
}

main() {
  local system_criu
  system_criu="$(command -v criu || true)"
  if [ -x "$VENV/bin/criu" ] && criu_ok "$VENV/bin/criu"; then
    log "using $VENV/bin/criu ($("$VENV/bin/criu" --version | head -n1))"
  elif [ -n "$system_criu" ] && criu_ok "$system_criu"; then
    log "using system CRIU $system_criu"
    ln -sf "$system_criu" "$VENV/bin/criu"
  else
    install_build_deps
    fetch_source
    build_criu
    install -m 0755 "$SRC/criu/criu" "$VENV/bin/criu"
    criu_ok "$VENV/bin/criu" || { "$VENV/bin/criu" check || true; log "criu check failed"; exit 1; }
    log "installed $VENV/bin/criu ($("$VENV/bin/criu" --version | head -n1))"
  fi
  if ! "$VENV/bin/python" -c "import pycriu" 2>/dev/null; then
    install_build_deps
    fetch_source
    build_criu
    log "installing pycriu into $VENV"
    "$VENV/bin/pip" install -q --no-build-isolation "./$SRC/lib"
  fi
}

main "$@"
