#!/bin/bash
# Ran on commit 44db5dd (the paired half-tile kernel, later dropped: `git show 44db5dd:kernels/grouped_gemm/mosaic.py`);
# the first attempt (c2_lowering_error/) on a936c85.
# Session 12, call b (c2_paired_half_tiles/): two half tiles now share one slot (each consumer
# runs one; every slot costs a full tile), as half tiles at half cost can let the SMs drift apart.
# Call a read Qwen3 fc1 forward 537 TFLOP/s for that tree and 569 for the tree before, in separate
# processes; this call's first attempt (c2_lowering_error/: the paired kernel did not lower, fixed
# with pl.multiple_of) read 544 for the tree before: ~5% between processes. Hence: (1) the kernel
# check, stopping the call when it fails; (2) twice, alternating: each Qwen3 kernel call (tuned
# tile, Dirichlet(1) groups) with the tree before (.peers/base, HEAD 00fe3f5) and with this tree,
# consumers storing in turns and not (same process); (3) the benchmark table for Qwen3's shapes,
# this tree then the tree before.
set -u
O=$OUT/c2; mkdir -p $O
source benchmarks/device_env.sh
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
cd /tmp
F="^WARNING|bfc_allocator"
set -o pipefail
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
prof() { timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 \
  --op fwd,dgrad,wgrad --sweep "$1" 2>&1 | grep -vE "$F"; }
for rep in 1 2; do
  PYTHONPATH=/tmp/base:/tmp/site prof tuned | sed "s/^/base /" | tee -a $O/sweep.log
  prof "tuned alternate_epilogues=0" | sed "s/^/this /" | tee -a $O/sweep.log
done
timeout 110 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
PYTHONPATH=/tmp/base:/tmp/site timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check \
  --shapes qwen3 --skip-xla --no-torch 2>&1 | grep -vE "$F|^\{" | tee $O/bench_base.log
