#!/bin/bash
# Session 31, call b (for an H100, when no H200 comes; ran at e7b8aa4's tree on an H100 80GB HBM3, 384 s: the
# fwd,dgrad sweep hit its 200 s timeout in dgrad's third turn, so dgrad stored nothing; its two turns read the
# table's tile and the swap-AB forms within 1%): retune Mixtral fc1's three kernel calls
# for the H100 on sustained timings (0.5 s, 3 turns, medians; --write-best stores each call's
# fastest tile for this device kind, as the H200's tiles were chosen), then the Mixtral shape's
# benchmark (ours, torch, the einsum in turns) with the new table. Session 30 read H100 Mixtral fc1
# at 1.00 | 0.99x torch (fwd | fwd+bwd) with tiles from the first H100 session.
#   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; mkdir -p $OUT/b1_tune $OUT/b2_bench; cd /tmp
P="python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape mixtral --orient fc1 --min-time 0.5 --repeat 3 --write-best"
S="256,4,4,0 256,4,8,0 256,4,16,0 256,4,4,1 256,4,8,1 256,4,16,1"
timeout 200 $P --op fwd,dgrad --sweep "tuned swap_ab=1 ${S// /,swap_ab=1 },swap_ab=1 einsum" 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $OUT/b1_tune/fwd_dgrad.log; grep -E "median|stored|WRONG" $OUT/b1_tune/fwd_dgrad.log
timeout 120 $P --op wgrad --sweep "tuned $S einsum" 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $OUT/b1_tune/wgrad.log; grep -E "median|stored|WRONG" $OUT/b1_tune/wgrad.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $OUT/b1_tune/tiles.json
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes mixtral 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $OUT/b2_bench/bench_mixtral.log | grep -v "^{"
