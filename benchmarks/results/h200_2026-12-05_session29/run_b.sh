#!/bin/bash
# NOT RUN on an H200: in session 29 no device machine could be started (18 calls over 2.5 h, for H200s and H100s),
# nor in session 30 until its twelfth call (11 failed starts), which got an H100: results/h100_2026-12-06_session30/ has
# call a in its short form (BASE=) and call b (in two calls) from there; call c is still not run.
# Session 29, call b: the grouped-GEMM kernels of this tree on the H200 (tiles.json unchanged
# since session 19; the kernel code changed in sessions 27-28).
#  (the small-shape check against float64 runs in call c: c0_check/)
#  b2_bench/: the six shapes, ours / ours on equal groups / torch._grouped_mm / einsum in turns
#    (3 x 0.5 s, medians), Qwen3 first, as session 20's f1_bench.
#   carry [".whl"] (ml_collections)
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
O=$OUT/b2_bench; mkdir -p $O
timeout 560 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3,mixtral,dsv3 2>&1 \
  | grep -vE "$F" | tee $O/bench.log | grep -v "^{"
