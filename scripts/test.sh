#!/usr/bin/env bash
# Set up (if needed) and run the checks: ruff lint, ruff format, the docs site (strict), pytest.
#   bash scripts/test.sh          everything (what CI runs)
#   bash scripts/test.sh --fast   the edit loop: lint and the tests not marked slow (no site)
# Other arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
if [ -z "${NEMON_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export NEMON_DATA_DIR="$ROOT/../shared/data"
fi
FAST=0
if [ "${1:-}" = "--fast" ]; then
  FAST=1
  shift
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
if [ "$FAST" = 1 ]; then
  exec .venv/bin/python -m pytest -m "not slow" "$@"
fi
# the site, built once: strict (warnings are errors) and without --quiet, which would hide them
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$SITE"
NEMON_SITE_DIR="$SITE" .venv/bin/python -m pytest "$@"
