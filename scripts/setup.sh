#!/usr/bin/env bash
# Create .venv (if missing) and install nemon with its dev tools; a second run with nothing
# changed (same pyproject.toml and this script) installs nothing.
# torch is pinned explicitly: an unpinned torch pulls a multi-GB CUDA build on these machines.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
STAMP=.venv/.nemon-setup
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$PY" -c "import nemon, torch" 2>/dev/null; then
  exit 0
fi
if ! "$PY" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  "$PY" -m pip install --quiet --upgrade pip
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
"$PY" -m pip install --quiet -e ".[dev]"
# MathJax for the docs site (its static files only; the package's server parts are not needed)
"$PY" -m pip install --quiet --no-deps "jupyter-server-mathjax==0.2.6"
echo "$WANT" > "$STAMP"
