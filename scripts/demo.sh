#!/usr/bin/env bash
# Set up (if needed), train a NEMON classifier on MNIST for one epoch, then report accuracy,
# solver iterations, the Lipschitz bound and certified accuracy.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
if [ -z "${NEMON_DATA_DIR:-}" ] && [ -d "$ROOT/../shared/data" ]; then
  export NEMON_DATA_DIR="$ROOT/../shared/data"
fi
OUT="${OUT:-runs/demo}"
rm -rf "$OUT"
.venv/bin/nemon train --preset mnist-fc --epochs 1 --out "$OUT"
.venv/bin/nemon certify "$OUT/checkpoint.pt" --eps 0 1e-4 1e-2 --method lipschitz pairwise interval \
  --json "$OUT/certify.json"
