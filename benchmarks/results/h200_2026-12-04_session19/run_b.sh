#!/bin/bash
# Ran on commit 24dec83.
# Session 19, call b: is swap-AB worth turning on, and what does a swapped remainder tile cost?
#  b1_ab/: the table's tile with and without swap_ab, forward and dgrad, timed in turns 5 times
#    (Qwen3, with the equal-groups einsum) or 3 times (DeepSeek-V3, Mixtral), medians last.
#  b2_remainders/: session 18's remainders.py with swap_ab set on the table's tile: Qwen3 fc2/fc1
#    forward and dgrad, every group given the same 0/32/64/96-row remainder; compare with session
#    18's c1_remainders/ and f1_remainders_bwd/ (the same without swap_ab).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/b1_ab; mkdir -p $O
timeout 200 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 --repeat 5 \
  --sweep "tuned swap_ab=1 einsum" 2>&1 | grep -vE "$F" > $O/qwen3.log
for s in dsv3 mixtral; do
  timeout 150 python3 $P --shape $s --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 --repeat 3 \
    --sweep "tuned swap_ab=1" 2>&1 | grep -vE "$F" > $O/$s.log
done
grep -h median $O/*.log
O=$OUT/b2_remainders; mkdir -p $O
timeout 200 python3 $R/benchmarks/results/h200_2026-12-03_session18/remainders.py 0.3 fwd,dgrad swap_ab=1 2>&1 \
  | grep -vE "$F" | tee $O/remainders.log
