#!/bin/bash
# Ran on 35b25da's tree (no kernel change since call c), on an H100 80GB HBM3 (asked for an H200); JAX 0.11.2.
# Session 36, call d (d1_bench/): Mixtral's two shapes again, ours, torch._grouped_mm and the einsum
# in turns (is call c's 0.98/0.99x forward against torch that machine or this tree?).
#   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/d1_bench; mkdir -p $O
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv,noheader | tee $O/bench.log
(cd /tmp && timeout 300 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes mixtral) 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' >> $O/bench.log
tail -n 4 $O/bench.log
