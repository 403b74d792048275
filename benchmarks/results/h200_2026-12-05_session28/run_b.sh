#!/bin/bash
# Session 28, call b: after run_a.sh, with its a2_ab/tiles.json copied over
# kernels/grouped_gemm/tiles.json in the tree that travels (committed only if b1 shows a gain).
#  b1_bench/: grouped_gemm.py on Qwen3 with that table: ours, torch._grouped_mm and the
#    equal-groups einsum, forward and forward+backward, in turns (the acceptance table's columns).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
O=$OUT/b1_bench; mkdir -p $O
timeout 400 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3 2>&1 \
  | grep -vE "$F" | tee $O/bench.log | grep -v "^{"
