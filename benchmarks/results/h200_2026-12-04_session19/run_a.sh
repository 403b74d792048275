#!/bin/bash
# Ran on commit eb93c84.
# Session 19, call a: swap-AB remainder tiles (TileConfig.swap_ab) on the GPU.
#  a1_check/: the small-shape check vs float64, now also with swap-AB tiles (shared, and
#    ping-pong + cluster + half tiles); a wrong kernel stops the call.
#  a2_swap_sweep/: Qwen3 fc1/fc2 forward and dgrad, the table's tile with and without swap_ab
#    (and with half tiles on and off), against the equal-groups einsum, same process;
#    DeepSeek-V3 and Mixtral, table tile with and without swap_ab.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
timeout 240 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log
grep -q "WRONG\|Error" $O/check.log && exit 1
O=$OUT/a2_swap_sweep; mkdir -p $O
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
timeout 240 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad --min-time 1 \
  --sweep "tuned swap_ab=1 swap_ab=1,half_tiles=0 swap_ab=1,half_tiles=1 einsum tuned" 2>&1 \
  | grep -vE "$F" | tee $O/qwen3.log
for s in dsv3 mixtral; do
  timeout 120 python3 $P --shape $s --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 \
    --sweep "tuned swap_ab=1 einsum" 2>&1 | grep -vE "$F" | tee $O/$s.log
done
