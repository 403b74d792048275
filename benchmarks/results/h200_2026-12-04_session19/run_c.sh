#!/bin/bash
# Session 19, call c: the six grouped GEMM shapes with the table as now (swap_ab on for Qwen3's
# and Mixtral's forward and dgrad, from call b) against torch._grouped_mm and the equal-groups
# einsum: benchmarks/grouped_gemm_device.sh bench (small-shape check first).
set -u -o pipefail
mkdir -p $OUT/c1_bench
OUT=$OUT/c1_bench BENCH_TIMEOUT=400 bash benchmarks/grouped_gemm_device.sh bench
