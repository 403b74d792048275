#!/bin/bash
# Ran on commit 4628f44 (kernels as in 9a0608d, checked on the GPU in session 19's call a).
# Session 20, call f (f1_bench/): the six shapes with grouped_gemm.py timing ours, torch and the
# equal-groups einsum in turns (3 turns of 0.5 s each, medians), Qwen3 first.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
O=$OUT/f1_bench; mkdir -p $O
timeout 430 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3,mixtral,dsv3 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $O/bench.log | grep -v "^{"
