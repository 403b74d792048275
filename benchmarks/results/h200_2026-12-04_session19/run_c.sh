#!/bin/bash
# Ran on commit 788cbfe.
# Session 19, call c: the six grouped GEMM shapes with the table as now (swap_ab on for Qwen3's
# and Mixtral's forward and dgrad, from call b) against torch._grouped_mm and the equal-groups
# einsum. The kernels are call a's (its small-shape check passed, a1_check/), so --skip-check: the
# first try of this call ran grouped_gemm_device.sh bench, whose check then had a 120 s limit and
# ran past it with the two swap-AB variants (now 240 s).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
O=$OUT/c1_bench; mkdir -p $O
timeout 450 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check 2>&1 | grep -vE "^WARNING|bfc_allocator" > $O/bench.log
grep -vE "^\{" $O/bench.log | tail -12
