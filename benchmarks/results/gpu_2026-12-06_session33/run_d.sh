#!/bin/bash
# Session 33, call d (an H100 again): the H100 tiles of Mixtral fc2 and DeepSeek-V3's forward and
# dgrad date from the first H100 session, before swap-AB remainder tiles (which gained 1.4-4% on
# Mixtral's forward and dgrad on an H200). Each call: its table tile against swap_ab=1 and other
# tile orders with it, 0.5 s sustained, 3 turns, medians, --write-best; then both shapes' benchmark.
#   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; mkdir -p $OUT/d1_tune $OUT/d2_bench; cd /tmp
tune() {  # SHAPE ORIENT OP SWEEP
  timeout 75 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape $1 --orient $2 --op $3 --min-time 0.5 \
    --repeat 3 --write-best --sweep "$4" 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/d1_tune/$1_$2_$3.log
  grep -E "median|stored|WRONG|skipped" $OUT/d1_tune/$1_$2_$3.log
}
S="tuned swap_ab=1 256,4,8,0,swap_ab=1 256,4,16,1,swap_ab=1"
for op in fwd dgrad; do tune mixtral fc2 $op "$S"; done
for o in fc1 fc2; do for op in fwd dgrad; do tune dsv3 $o $op "$S"; done; done
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $OUT/d1_tune/tiles.json
timeout 170 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes mixtral,dsv3 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $OUT/d2_bench/bench.log; grep -v "^{" $OUT/d2_bench/bench.log | tail -6
