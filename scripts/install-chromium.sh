#!/usr/bin/env bash
# Debian's Chromium for the UI tests (Playwright drives it through executablePath; nothing is downloaded).
set -euo pipefail
command -v chromium >/dev/null && exit 0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "[install-chromium] installing Debian's chromium"
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends chromium >/dev/null
