#!/bin/bash
# Ran on commit 2d43d63 (kernels as in b52aed3).
# Session 18, call b (b1_zero_rows/): does the power-limited MMA run faster on zero rows?
# zero_rows.py: Qwen3 fc2/fc1 forward, the equal-groups einsum with 0 / 12.5% / 50% of each group's
# rows zero, and ours on Dirichlet(1) and on equal groups, sustained, clocks and power sampled.
set -u -o pipefail
O=$OUT/b1_zero_rows; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 240 python3 $R/benchmarks/results/h200_2026-12-03_session18/zero_rows.py 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $O/zero_rows.log
