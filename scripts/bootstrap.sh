#!/usr/bin/env bash
# Set up what running edged needs on a fresh Debian/Ubuntu machine, idempotently: python3-venv and a
# private virtual environment in .venv with edged and its runtime extras (edged[all]). Nothing else:
# this may be a plant PC. scripts/test.sh runs this with EDGED_SETUP=test, which adds the test
# tooling: APT_PACKAGES below (mosquitto, nats-server, influxdb and socat for the test peers,
# libsystemd-dev + pkg-config + gcc for the journald extra, buildah + debootstrap to build the
# container image, systemd-analyze, strace and shellcheck for the unit checks, chromium +
# chromium-driver for the web UI's browser tests) and edged[dev] (pytest, ruff, mypy, selenium...).
#
# PYTHON=python3.11 picks the interpreter (3.11 or newer; Ubuntu 22.04 ships 3.10: install
# python3.11 and python3.11-venv first).
#
# edged lives in its own virtual environment on purpose: its top-level packages `drivers`, `buffer`
# and `uplink` share names with unrelated PyPI projects, which must never be installed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(mosquitto nats-server socat libsystemd-dev pkg-config gcc python3-venv python3-dev openssl
    buildah debootstrap strace shellcheck systemd influxdb)  # last six: image build, unit checks, influxd test peer
APT_PACKAGES+=(chromium chromium-driver)  # the web UI's browser tests (selenium)
RUNTIME_APT_PACKAGES=(python3-venv)  # what running edged needs
if [ "${EDGED_SETUP:-run}" = test ]; then
    want=("${RUNTIME_APT_PACKAGES[@]}" "${APT_PACKAGES[@]}") extras=dev
else
    want=("${RUNTIME_APT_PACKAGES[@]}") extras=all
fi
missing=()
for p in "${want[@]}"; do
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
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: edged needs Python 3.11 or newer; $PYTHON is $("$PYTHON" -V 2>&1)." >&2
    echo "  On Ubuntu 22.04: apt-get install python3.11 python3.11-venv, then PYTHON=python3.11 bash $0" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "bootstrap: creating .venv" >&2
    "$PYTHON" -m venv .venv
fi
# Reinstall only when the project metadata changed since the last successful install.
stamp=".venv/.edged-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "bootstrap: installing edged[$extras] into .venv" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[$extras]"
    touch "$stamp"
fi
