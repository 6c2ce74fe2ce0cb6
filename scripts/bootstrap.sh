#!/usr/bin/env bash
# Set up everything edged needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (mosquitto, nats-server, influxdb and socat for the tests, libsystemd-dev + pkg-config + gcc for the
# journald extra, buildah + debootstrap to build the container image, systemd-analyze, strace and
# shellcheck for the unit checks) and a private virtual environment in .venv with edged and all
# its extras.
#
# edged lives in its own virtual environment on purpose: its top-level packages `drivers`, `buffer`
# and `uplink` share names with unrelated PyPI projects, which must never be installed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto nats-server socat libsystemd-dev pkg-config gcc python3-venv python3-dev openssl
    buildah debootstrap strace shellcheck systemd influxdb)  # last six: image build, unit checks, influxd test peer
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "bootstrap: installing system packages: ${missing[*]}" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the project metadata changed since the last successful install.
stamp=.venv/.edged-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing edged[dev] into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[dev]"
    touch "$stamp"
fi
