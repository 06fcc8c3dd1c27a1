#!/bin/bash
# GPU preview: does gamma (the contraction bound) change certified accuracy at eps 0.3?
# Needs a copy of the MNIST files in ./${DATA_COPY:-gpu_data}/mnist (the data folder does not travel to the device).
export PYTHONPATH=$PWD/src NEMON_DATA_DIR=$PWD/${DATA_COPY:-gpu_data} PYTHONUNBUFFERED=1
mkdir -p /tmp/r
run() { name=$1; shift; timeout 215 python3 -m nemon train --device cuda --threads 2 --no-progress --preset mnist-cert-0.3 --epochs 10 --cert-ramp-epochs 5 --lr-milestones 8 9 --out /tmp/r/$name "$@" > /tmp/r/$name.log 2>&1 & }
run g0.5 --gamma 0.5
run g0.0 --gamma 0.0
run g-1 --gamma -1.0
run g0.9 --gamma 0.9
run explicit --model explicit
wait
python3 benchmarks/device/collect_runs.py /tmp/r > $OUT/gamma.jsonl
tail -n 3 /tmp/r/*.log > $OUT/gamma.log 2>&1
