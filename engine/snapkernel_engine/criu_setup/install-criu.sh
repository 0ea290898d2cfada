#!/usr/bin/env bash
# Provide CRIU >= 4.0 and pycriu to one Python environment: $PREFIX/bin/criu and pycriu installed
# into $PYTHON. Uses the system's CRIU when it is new enough, `criu check` passes and no patches are
# shipped; otherwise builds Debian's criu source package in $BUILD_DIR, with every
# $PATCH_DIR/*.patch applied in name order. With $GRANT_GROUP (as root), also the one privileged grant:
# group $GRANT_GROUP and $CAP_CRIU, a copy of that criu holding only cap_checkpoint_restore that only the
# group may run. Run through `jupyter snapkernel install-criu [--grant-group GROUP]`.
set -euo pipefail

: "${PREFIX:?PREFIX must name the Python environment to install into}"
: "${PYTHON:?PYTHON must name the interpreter of PREFIX}"
: "${BUILD_DIR:?BUILD_DIR must name the folder CRIU is built in}"
PATCH_DIR="${PATCH_DIR:-}"
RERUN_COMMAND="${RERUN_COMMAND:-jupyter snapkernel install-criu}"
GRANT_GROUP="${GRANT_GROUP:-}"
CAP_CRIU="${CAP_CRIU:-}"
CRIU_VERSION="${CRIU_VERSION:-4.2.1}"
SRC="$BUILD_DIR/criu-$CRIU_VERSION"
# Which patches a build or an installed criu holds: one "sha256  name" line each (empty: none).
SOURCE_PATCH_RECORD="$SRC/.snapkernel-patches"
PREFIX_PATCH_RECORD="$PREFIX/.snapkernel-criu-patches"
BUILD_DEPS="build-essential libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev \
libnl-3-dev libprotobuf-c-dev libprotobuf-dev pkg-config protobuf-c-compiler protobuf-compiler \
uuid-dev python3-protobuf iproute2 xz-utils patch"

log() { printf '[install-criu] %s\n' "$*"; }
fail() { log "$*"; exit 1; }

criu_ok() {
  local bin="$1" version
  [ -x "$bin" ] || return 1
  version="$("$bin" --version 2>/dev/null | sed -n 's/^Version: //p')"
  [ "${version%%.*}" -ge 4 ] 2>/dev/null || return 1
  "$bin" check >/dev/null 2>&1
}

as_root() {
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    fail "'$*' needs root and sudo is not installed: run as root \`$RERUN_COMMAND\`"
  fi
}

apt_ready=""
apt_update_once() {
  [ -n "$apt_ready" ] && return 0
  as_root apt-get update -qq
  apt_ready=1
}

# Install the Debian packages named in $2… that are missing; $1 says what they are for.
install_packages() {
  local what="$1" missing=()
  shift
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] && ! command -v sudo >/dev/null; then
    fail "$what are missing and installing them needs root: run as root" \
      "\`apt-get install ${missing[*]}\` and then this again, or \`$RERUN_COMMAND\`"
  fi
  log "installing $what: ${missing[*]}"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# shellcheck disable=SC2086 # BUILD_DEPS is a list of package names
install_build_deps() { install_packages "CRIU's build dependencies" $BUILD_DEPS; }

patch_files() {
  [ -n "$PATCH_DIR" ] && [ -d "$PATCH_DIR" ] || return 0
  find "$PATCH_DIR" -maxdepth 1 -type f -name '*.patch' | LC_ALL=C sort
}

wanted_patches() {
  local file
  patch_files | while IFS= read -r file; do
    printf '%s  %s\n' "$(sha256sum "$file" | cut -d' ' -f1)" "$(basename "$file")"
  done
}

download_tarball() {
  # Source lines only: binary lines from a newer suite would upgrade libc on Debian 12.
  local srclist=/etc/apt/sources.list.d/snapkernel-criu-src.sources
  if [ ! -f "$srclist" ]; then
    log "adding a deb-src entry for Debian's criu source package"
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' |
      as_root tee "$srclist" >/dev/null
    apt_ready=""
  fi
  apt_update_once
  (cd "$BUILD_DIR" && apt-get source --download-only "criu=$CRIU_VERSION-1" >/dev/null 2>&1 || true)
}

find_tarball() { find "$BUILD_DIR" -maxdepth 1 -name "criu_$CRIU_VERSION.orig.tar.*" | LC_ALL=C sort | head -n1; }

# Unpack the source with exactly the wanted patches applied; a tree patched otherwise is unpacked afresh.
fetch_source() {
  local wanted="$1" tarball file
  if [ -d "$SRC" ]; then
    [ "$(cat "$SOURCE_PATCH_RECORD" 2>/dev/null)" = "$wanted" ] && return 0
    log "the patches changed since $SRC was built: unpacking it afresh"
    rm -rf "$SRC"
  fi
  mkdir -p "$BUILD_DIR"
  tarball="$(find_tarball)"
  if [ -z "$tarball" ]; then
    download_tarball
    tarball="$(find_tarball)"
    [ -n "$tarball" ] || fail "could not download criu_$CRIU_VERSION.orig.tar.* into $BUILD_DIR"
  fi
  log "unpacking $tarball"
  tar -C "$BUILD_DIR" -xf "$tarball"
  while IFS= read -r file; do
    log "applying $(basename "$file")"
    if ! patch -d "$SRC" -p1 --batch --quiet <"$file"; then
      rm -rf "$SRC"
      fail "$(basename "$file") does not apply to CRIU $CRIU_VERSION"
    fi
  done < <(patch_files)
  printf '%s' "$wanted" >"$SOURCE_PATCH_RECORD"
}

build_criu() {
  if [ ! -x "$SRC/criu/criu" ] || [ ! -f "$SRC/lib/pycriu/rpc_pb2.py" ]; then
    log "building CRIU $CRIU_VERSION (make criu lib; log: $BUILD_DIR/build.log)"
    make -C "$SRC" -j"$(nproc)" criu lib >"$BUILD_DIR/build.log" 2>&1 ||
      { tail -n 40 "$BUILD_DIR/build.log"; fail "building CRIU failed (log: $BUILD_DIR/build.log)"; }
  fi
}

prepare_build() {
  install_build_deps
  fetch_source "$1"
  build_criu
}

pycriu_importable() { "$PYTHON" -c "import pycriu" 2>/dev/null; }

install_pycriu() {
  # pycriu's build needs setuptools with bdist_wheel (older setuptools get it from wheel), and imports
  # pycriu, hence protobuf, to read its version.
  if ! "$PYTHON" -c "import setuptools, wheel, google.protobuf" 2>/dev/null; then
    log "installing what building pycriu needs into $PREFIX: setuptools, wheel, protobuf"
    "$PYTHON" -m pip install -q setuptools wheel protobuf
  fi
  log "installing pycriu into $PREFIX"
  "$PYTHON" -m pip install -q --no-build-isolation "$SRC/lib"
  pycriu_importable || fail "pycriu does not import in $PYTHON after installing it"
}

# The one privileged grant: checkpoint_restore (never sys_ptrace), to members of $GRANT_GROUP only, in a
# copy of $PREFIX/bin/criu at $CAP_CRIU. chown would drop the file capability, so ownership and mode are
# set before setcap. Idempotent: a copy that is already right is left alone.
grant_capability() {
  [ "$(id -u)" = 0 ] || fail "--grant-group needs root: it creates group $GRANT_GROUP and gives a criu copy" \
    "a file capability: run as root \`$RERUN_COMMAND\`"
  [ -n "$CAP_CRIU" ] || fail "CAP_CRIU must name where the capability-holding criu goes"
  install_packages "the tools that grant a file capability" libcap2-bin
  getent group "$GRANT_GROUP" >/dev/null || { log "creating group $GRANT_GROUP"; groupadd --system "$GRANT_GROUP"; }
  (umask 022 && install -d -m 0755 "$(dirname "$CAP_CRIU")")  # every user must reach it
  if ! cmp -s "$PREFIX/bin/criu" "$CAP_CRIU" || [ "$(stat -c %U:%G:%a "$CAP_CRIU")" != "root:$GRANT_GROUP:750" ] ||
    [ "$(getcap "$CAP_CRIU" | awk '{print $2}')" != "cap_checkpoint_restore=eip" ]; then
    log "installing $CAP_CRIU (root:$GRANT_GROUP, 0750, cap_checkpoint_restore)"
    install -o root -g "$GRANT_GROUP" -m 0750 "$PREFIX/bin/criu" "$CAP_CRIU.new"
    setcap cap_checkpoint_restore+eip "$CAP_CRIU.new"
    mv -f "$CAP_CRIU.new" "$CAP_CRIU"
  else
    log "using $CAP_CRIU (root:$GRANT_GROUP, 0750, cap_checkpoint_restore)"
  fi
  log "members of group $GRANT_GROUP get capability mode (add one with \`usermod -aG $GRANT_GROUP USER\`)"
}

main() {
  local wanted installed system_criu built=""
  wanted="$(wanted_patches)"
  installed="$(cat "$PREFIX_PATCH_RECORD" 2>/dev/null || true)"
  system_criu="$(type -ap criu | grep -vxF "$PREFIX/bin/criu" | head -n1 || true)"
  mkdir -p "$PREFIX/bin"
  if criu_ok "$PREFIX/bin/criu" && [ "$installed" = "$wanted" ]; then
    log "using $PREFIX/bin/criu ($("$PREFIX/bin/criu" --version | head -n1))"
  elif [ -z "$wanted" ] && [ -n "$system_criu" ] && criu_ok "$system_criu"; then
    log "using system CRIU $system_criu"
    ln -sf "$system_criu" "$PREFIX/bin/criu"
    rm -f "$PREFIX_PATCH_RECORD"
  else
    prepare_build "$wanted"
    install -m 0755 "$SRC/criu/criu" "$PREFIX/bin/criu.new"
    mv -f "$PREFIX/bin/criu.new" "$PREFIX/bin/criu"
    criu_ok "$PREFIX/bin/criu" || { "$PREFIX/bin/criu" check || true; fail "criu check failed"; }
    if [ -n "$wanted" ]; then printf '%s' "$wanted" >"$PREFIX_PATCH_RECORD"; else rm -f "$PREFIX_PATCH_RECORD"; fi
    built=1
    log "installed $PREFIX/bin/criu ($("$PREFIX/bin/criu" --version | head -n1))"
  fi
  if [ -n "$built" ] || ! pycriu_importable; then
    prepare_build "$wanted"
    install_pycriu
  else
    log "pycriu already importable in $PREFIX"
  fi
  [ -z "$GRANT_GROUP" ] || grant_capability
  log "done: check with \`$PREFIX/bin/jupyter snapkernel doctor\`"
}

main "$@"
