#!/bin/bash
# Ran on commit 30ed924. Session 14, call e (e1_mixtral_bench/): the Mixtral benchmark with this
# session's wgrad (steps from the 8-row grid), torch._grouped_mm and the einsum beside it.
set -u -o pipefail
O=$OUT/e1_mixtral_bench; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --shapes mixtral --skip-xla 2>&1 | grep -vE "^WARNING|bfc_allocator|^\{" | tee $O/bench.log
