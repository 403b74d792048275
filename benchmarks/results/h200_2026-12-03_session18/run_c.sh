#!/bin/bash
# Ran on commit 9dbafea (kernels as in b52aed3).
# Session 18, call c (c1_remainders/): what a group's part-filled last tile costs, in full tiles
# (remainders.py: Qwen3 fc2/fc1 forward, every group given the same remainder of 0/32/64/96 rows,
# with and without half tiles; the Dirichlet sizes and equal groups beside them).
set -u -o pipefail
O=$OUT/c1_remainders; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 300 python3 $R/benchmarks/results/h200_2026-12-03_session18/remainders.py 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $O/remainders.log
