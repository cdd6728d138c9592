#!/usr/bin/env bash
# Install the Debian packages the test suite needs: PostgreSQL 15 with PostGIS 3, which
# the loopback STAC API (stac-fastapi-pgstac, loaded with pypgstac) runs on in
# tests/test_stac_api.py. Idempotent: does nothing when the packages are present.
# Usage: scripts/install-sysdeps.sh   (as root, or with sudo available)
set -euo pipefail

PACKAGES=(postgresql-15-postgis-3 postgresql-contrib)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-sysdeps: all present (${PACKAGES[*]})"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-sysdeps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    fi
fi

echo "install-sysdeps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
