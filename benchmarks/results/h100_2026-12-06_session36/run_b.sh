#!/bin/bash
# Session 36, call b (b1_bench/): the six grouped-GEMM shapes on an H200 with this tree's kernels and
# tiles.json, ours, ours on equal groups, torch._grouped_mm and the equal-groups einsum timed in
# turns (3 x 0.5 s, medians), TFLOP/s fwd | fwd+bwd (issue 18's grouped-GEMM acceptance).
#   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/b1_bench; mkdir -p $O
(cd /tmp && timeout 560 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla) 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $O/bench.log
tail -n 12 $O/bench.log
