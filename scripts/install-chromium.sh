#!/usr/bin/env bash
# Debian's Chromium for the UI tests (Playwright drives it through executablePath; nothing is downloaded).
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
apt_ready=""
apt_install() {
  [ -n "$apt_ready" ] || { as_root apt-get update -qq; apt_ready=1; }
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Debian's python3-venv, for the wheel test (tests/cli/test_wheel_install.py): it makes a fresh venv with
# `/usr/bin/python3 -m venv`, which a bare Debian 12 cannot do without this package.
if ! installed python3-venv; then
  echo "[install-chromium] installing Debian's python3-venv (for the wheel test)"
  apt_install python3-venv
fi

command -v chromium >/dev/null && exit 0
echo "[install-chromium] installing Debian's chromium"
apt_install chromium
