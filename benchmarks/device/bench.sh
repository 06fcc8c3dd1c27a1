#!/bin/bash
# CUDA tests, then `nemon bench --device cuda` (issue #12); writes to $OUT
# Needs a copy of the MNIST files in ./${DATA_COPY:-gpu_data}/mnist (the data folder does not travel to the device).
export PYTHONPATH=$PWD/src NEMON_DATA_DIR=$PWD/${DATA_COPY:-gpu_data} PYTHONUNBUFFERED=1
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_layers.py -k cuda > $OUT/tests.log 2>&1
echo "tests rc $?" >> $OUT/tests.log
{ nvidia-smi -L; timeout 250 python3 -m nemon bench --device cuda --threads 4 --out $OUT/bench; echo "bench rc $?"; } > $OUT/bench.log 2>&1
