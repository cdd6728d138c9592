#!/usr/bin/env bash
# System packages the report tests need: a real headless browser to open report.html.
# Debian/Ubuntu; run as root (or with sudo).
set -euo pipefail
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update
    apt-get install -y chromium
fi
