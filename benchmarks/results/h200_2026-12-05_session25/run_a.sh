#!/bin/bash
# Ran on the tree committed with it (8bc2545 plus CPU-only review changes; kernels as in session 19;
# grouped_gemm casts both operands with vary_like before the tiled/Pallas custom VJPs since d773f32).
# Session 25, call a:
#  a1_check/: grouped_gemm.py's small-shape check of the table's tiles against float64 on the GPU.
#  a2_same_call_titan/: both proxies from 90e6687's tree (.peers/base, before the vary_like cast)
#    and this tree, torchtitan's proxies, and the tiny recipe's bf16 loss in both trees.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/
#   mkdir -p .peers/base && git archive 90e6687 moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers"]
set -u -o pipefail
source benchmarks/device_env.sh
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only) 2>&1 | grep -vE "$F" > $O/check.log
tail -n 6 $O/check.log
grep -q WRONG $O/check.log && exit 1
BASE=${BASE-.peers/base} OUT=$OUT/a2_same_call_titan bash benchmarks/proxies_vs_titan.sh  # BASE= : no before tree
