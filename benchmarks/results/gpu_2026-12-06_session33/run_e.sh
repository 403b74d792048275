#!/bin/bash
# Session 33, call e: the DeepSeek-V3 shapes' benchmark with the retuned H100 tiles (call d's time
# limit cut its fc2 line), in turns as before.   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; mkdir -p $OUT/e1_bench; cd /tmp
timeout 140 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes dsv3 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $OUT/e1_bench/bench_dsv3.log; grep -v "^{" $OUT/e1_bench/bench_dsv3.log | tail -3
