#!/bin/bash
# Ran on commit 017e740 (kernels as in b52aed3).
# Session 18, call f (f1_remainders_bwd/): call c's probe (0.3 s timings) for dgrad and wgrad,
# remainders.py with OPS=dgrad,wgrad, so the breakdown covers all three calls.
set -u -o pipefail
O=$OUT/f1_remainders_bwd; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 420 python3 $R/benchmarks/results/h200_2026-12-03_session18/remainders.py 0.3 dgrad,wgrad 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' | tee $O/remainders.log
