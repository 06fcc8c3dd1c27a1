#!/bin/bash
# GPU preview (issue #9): the robust (interval) weight of the MTL-IBP mix for the eps-0.1 model,
# the mnist-cert-medium-mtl-h256-0.1 recipe compressed to 10 epochs, whole test set certified each epoch.
# Needs a copy of the MNIST files in ./${DATA_COPY:-gpu_data}/mnist (the data folder does not travel to the device).
export PYTHONPATH=$PWD/src NEMON_DATA_DIR=$PWD/${DATA_COPY:-gpu_data} PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-290}
mkdir -p /tmp/r
short="--epochs 10 --cert-ramp-epochs 4 --lr-milestones 8 9 --cert-eval-limit 10000"
run() { name=$1; shift; timeout $LIMIT python3 -m nemon train --device cuda --threads 3 --no-progress --preset mnist-cert-medium-mtl-h256-0.1 $short --out /tmp/r/$name "$@" > /tmp/r/$name.log 2>&1 & }
run w0.2
run w0.1 --cert-weight 0.1
run w0.05 --cert-weight 0.05
run w0.02 --cert-weight 0.02
wait
python3 benchmarks/device/collect_runs.py /tmp/r > $OUT/runs.jsonl
tail -n 3 /tmp/r/*.log > $OUT/train.log 2>&1
