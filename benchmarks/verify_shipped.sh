#!/usr/bin/env bash
# Complete verification of every shipped model at its radius on the whole MNIST test set, one
# after another, each into its run folder under benchmarks/results/verification (resumable:
# run this again and each folder continues where it stopped; a folder with every image
# recorded is left alone: retry its unknowns with `nemon verify ... --resume`). One thread each.
#   NEMON_DATA_DIR=../shared/data bash benchmarks/verify_shipped.sh [TIME_LIMIT]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LIMIT="${1:-60}"
OUT=benchmarks/results/verification
for spec in mnist-cert-0.1:0.1 mnist-cert-0.3:0.3 mnist-cert-medium-mtl-h256-0.1:0.1 \
            mnist-cert-medium-mtl-h256-ens2-0.1:0.1; do
  name="${spec%%:*}" eps="${spec##*:}"
  folder="$OUT/$name-eps$eps"
  resume=()
  if [ -f "$folder/summary.json" ] && .venv/bin/python -c \
      "import json,sys; s=json.load(open(sys.argv[1])); sys.exit(s['recorded'] != s['images'])" \
      "$folder/summary.json"; then
    continue
  fi
  [ -f "$folder/config.json" ] && resume=(--resume)
  .venv/bin/nemon verify "$name" --eps "$eps" --time-limit "$LIMIT" --threads 1 --no-progress \
    --out "$folder" "${resume[@]}"
done
