#!/bin/bash
# GPU preview of certified-training recipes (issue #9) and the CUDA tests; writes to $OUT
# Needs a copy of the MNIST files in ./${DATA_COPY:-gpu_data}/mnist (the data folder does not travel to the device).
export PYTHONPATH=$PWD/src NEMON_DATA_DIR=$PWD/${DATA_COPY:-gpu_data} PYTHONUNBUFFERED=1
LIMIT=${LIMIT:-450}
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > $OUT/env.log 2>&1
mkdir -p /tmp/r
run() { name=$1; shift; timeout $LIMIT python3 -m nemon train --device cuda --threads 2 --no-progress --init ibp --out /tmp/r/$name "$@" > /tmp/r/$name.log 2>&1 & }
run med-0.1 --preset mnist-cert-0.1 --arch conv-medium --epochs 22 --cert-ramp-epochs 8 --lr-milestones 15 19
run med-0.3 --preset mnist-cert-0.3 --arch conv-medium --epochs 25 --cert-ramp-epochs 10 --lr-milestones 18 22
run small-0.1-long --preset mnist-cert-0.1 --arch conv-small --epochs 120 --cert-ramp-epochs 30 --lr-milestones 90 110
run small-0.3-long --preset mnist-cert-0.3 --arch conv-small --epochs 120 --cert-ramp-epochs 35 --lr-milestones 90 110
run med-0.1-h300 --preset mnist-cert-0.1 --arch conv-medium --hidden 300 --epochs 22 --cert-ramp-epochs 8 --lr-milestones 15 19
run med-0.3-e35 --preset mnist-cert-0.3 --arch conv-medium --cert-eps 0.35 --epochs 25 --cert-ramp-epochs 10 --lr-milestones 18 22
run med-0.3-explicit --preset mnist-cert-0.3 --model explicit --arch conv-medium --epochs 25 --cert-ramp-epochs 10 --lr-milestones 18 22
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_layers.py -k "cuda" > $OUT/tests.log 2>&1
echo "tests rc $?" >> $OUT/tests.log
sleep 5; nvidia-smi > $OUT/smi.log 2>&1
wait
python3 benchmarks/device/collect_runs.py /tmp/r > $OUT/runs.jsonl
tail -n 5 /tmp/r/*.log > $OUT/train.log 2>&1
