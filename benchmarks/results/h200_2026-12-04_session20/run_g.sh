#!/bin/bash
# Ran on commit 0ce07e7.
# Session 20, call g (g1_ptxas/): does ptxas serialize the wgmmas (or spill) in any of the table's
# tiles? Its report for every call of the six shapes (MOSAIC_GPU_DUMP_PTXAS=1), one line per kernel.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
O=$OUT/g1_ptxas; mkdir -p $O
for s in qwen3 mixtral dsv3; do
  for op in fwd dgrad wgrad; do
    d=/tmp/ptxas_${s}_$op; mkdir -p $d
    MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_TO=$d timeout 60 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py \
      --shape $s --orient fc1,fc2 --op $op --sweep tuned --min-time 0.01 > $d/run.log 2>&1
    for f in $d/*.ptxas; do
      echo "$s $op $(basename $f): serialized=$(grep -c serialized $f) spill=$(grep -o '[0-9]* bytes spill stores' $f | head -1) $(grep -o 'Used [0-9]* registers' $f)"
    done
    grep -h "TFLOP" $d/run.log | sed 's/^/  /'
  done
done | tee $O/summary.txt
