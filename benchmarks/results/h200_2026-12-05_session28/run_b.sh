#!/bin/bash
# Session 28, call b: after run_a.sh, with its a2_fwd/tiles.json copied over
# kernels/grouped_gemm/tiles.json in the tree that travels (not committed unless b2 shows a gain).
#  b1_dgrad/: as a2_fwd for Qwen3 fc1/fc2 dgrad (--write-best; b1_dgrad/tiles.json).
#  b2_bench/: grouped_gemm.py on Qwen3 with that table: ours, torch._grouped_mm and the
#    equal-groups einsum, forward and forward+backward, in turns (the acceptance table's columns).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
O=$OUT/b1_dgrad; mkdir -p $O
timeout 330 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op dgrad \
  --min-time 0.5 --repeat 5 --write-best \
  --sweep "tuned merge_tail=64,stages=3 merge_tail=64,stages=4 merge_tail=32,stages=3 merge_tail=32,stages=5 stages=4 einsum" \
  2>&1 | grep -vE "$F" > $O/qwen3.log
grep -hE "median|WRONG|skipped|stored" $O/qwen3.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
O=$OUT/b2_bench; mkdir -p $O
timeout 240 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3 2>&1 \
  | grep -vE "$F" | tee $O/bench.log | grep -v "^{"
