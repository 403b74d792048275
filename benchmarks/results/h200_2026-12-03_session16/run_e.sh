#!/bin/bash
# Ran on commit bbd942f. Session 16, call e (e1_dsv3_bench/): the kernel check, then the DeepSeek-V3
# benchmark with this session's wgrad deal (torch._grouped_mm, ours on equal groups, the einsum).
set -u -o pipefail
O=$OUT/e1_dsv3_bench; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes dsv3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
