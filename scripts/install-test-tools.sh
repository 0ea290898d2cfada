#!/usr/bin/env bash
# Debian packages the tests use, installed only when missing: podman, runc, debootstrap and uidmap (tests/containers);
# docker-registry, openssl and htpasswd (apache2-utils) for a real OCI registry (tests/registry_server.py).
set -euo pipefail
missing=()
for pkg in podman runc debootstrap uidmap docker-registry openssl apache2-utils; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
[ ${#missing[@]} = 0 ] && exit 0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "[install-test-tools] installing ${missing[*]}"
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
