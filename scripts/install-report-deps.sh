#!/usr/bin/env bash
# System packages the report tests need: a real headless browser to open report.html, and
# a CJK font so the Chinese report renders without missing glyphs (Debian's Noto Sans CJK).
# Debian/Ubuntu; run as root (or with sudo). Idempotent: installs only what is missing.
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update
    apt-get install -y chromium
fi
if ! dpkg-query -W -f='${Status}' fonts-noto-cjk 2>/dev/null | grep -q "install ok installed"; then
    apt-get update
    apt-get install -y --no-install-recommends fonts-noto-cjk
fi
