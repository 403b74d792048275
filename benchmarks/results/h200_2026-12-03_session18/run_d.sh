#!/bin/bash
# Ran on commit 8c43ee1 (kernels as in b52aed3).
# Session 18, call d (d1_remainders_sustained/): call c again with 1 s of back-to-back calls per
# timing (the sustained, power-limited speed), to see that the part-filled tiles' costs and the
# r = 0 ratio to the einsum hold there too.
set -u -o pipefail
O=$OUT/d1_remainders_sustained; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 500 python3 $R/benchmarks/results/h200_2026-12-03_session18/remainders.py 1.0 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $O/remainders.log
