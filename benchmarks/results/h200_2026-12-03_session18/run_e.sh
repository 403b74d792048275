#!/bin/bash
# Ran on commit 5a7cb4e (kernels as in b52aed3).
# Session 18, call e (e1_swap_ab_probe/): does a swap-AB tile (a group's last rows as wgmma's N,
# the weight block as its M, the accumulator stored transposed) compile and compute right on the
# GPU? swap_ab_probe.py at 8, 16, 32, 64, 96 and 128 rows (it lowers and runs in interpret mode on a CPU).
set -u -o pipefail
O=$OUT/e1_swap_ab_probe; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
for r in 8 16 32 64 96 128; do
  timeout 60 python3 $R/benchmarks/results/h200_2026-12-03_session18/swap_ab_probe.py gpu $r 2>&1 \
    | grep -vE '^WARNING|bfc_allocator' | tail -3
done | tee $O/probe.log
