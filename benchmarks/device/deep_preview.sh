#!/bin/bash
# GPU preview (issue #9): deeper encoders against conv-medium for the eps-0.1 model, in a
# compressed 14-epoch schedule, certified accuracy on the whole test set after each epoch.
# Needs a copy of the MNIST files in ./${DATA_COPY:-gpu_data}/mnist (the data folder does not travel to the device).
export PYTHONPATH=$PWD/src NEMON_DATA_DIR=$PWD/${DATA_COPY:-gpu_data} PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-480}
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > $OUT/env.log 2>&1
mkdir -p /tmp/r
short="--epochs 14 --cert-ramp-epochs 5 --lr-milestones 10 12 --cert-eval-limit 10000"
run() { name=$1; shift; timeout $LIMIT python3 -m nemon train --device cuda --threads 3 --no-progress --preset mnist-cert-medium-mtl-h256-0.1 $short --out /tmp/r/$name "$@" > /tmp/r/$name.log 2>&1 & }
run base
run base-seed1 --seed 1
run medium-fc --arch conv-medium-fc
run deep --arch conv-deep
run deep-eps015 --arch conv-deep --cert-eps 0.15
sleep 60; nvidia-smi > $OUT/smi.log 2>&1
wait
python3 benchmarks/device/collect_runs.py /tmp/r > $OUT/runs.jsonl
tail -n 5 /tmp/r/*.log > $OUT/train.log 2>&1
