#!/bin/bash
# Ran on commit 180c911.
# Session 20, call d (d1_variants/): ptxas_variants.py, see its docstring.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
O=$OUT/d1_variants; mkdir -p $O
timeout 560 python3 $R/benchmarks/results/h200_2026-12-04_session20/ptxas_variants.py $O 2>&1 | grep -vE '^WARNING|bfc_allocator' | tee $O/variants.log
