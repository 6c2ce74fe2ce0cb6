#!/usr/bin/env bash
# The whole test suite, from a fresh clone: set up, lint, type-check, test.
# Extra arguments go to pytest (e.g. scripts/test.sh -m fault, or -k mqtt).
set -euo pipefail
cd "$(dirname "$0")/.."
EDGED_SETUP="test" bash scripts/bootstrap.sh  # what edged needs, plus the test tooling
echo "== ruff" && .venv/bin/ruff check . && .venv/bin/ruff format --check .
echo "== mypy" && .venv/bin/mypy
# The container image build (buildah, a few minutes) is part of the suite when running as root;
# EDGED_CONTAINER_TEST=0 skips it while iterating.
if [ "$(id -u)" -eq 0 ]; then export EDGED_CONTAINER_TEST="${EDGED_CONTAINER_TEST:-1}"; fi
echo "== pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
