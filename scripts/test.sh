#!/usr/bin/env bash
# Set up (if needed) and run the checks: ruff lint, ruff format, the docs site (strict), pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
if [ -z "${NEMON_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export NEMON_DATA_DIR="$ROOT/../shared/data"
fi
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
.venv/bin/python -m pytest "$@"
