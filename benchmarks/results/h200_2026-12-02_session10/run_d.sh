#!/bin/bash
# Session 10, call d: the cross-entropy kernel's second form (no per-element masks or label compare
# in whole blocks) against XLA's passes; then issue 18's acceptance run: both proxies from HEAD
# 45636dc (.peers/base) and this tree, torchtitan, the tiny bf16 loss in both, all in one call;
# then a profile breakdown of the Mixtral proxy from this tree.
source benchmarks/device_env.sh
(cd /tmp && timeout 120 python3 /tmp/pp/benchmarks/cross_entropy.py --sweep "8192,8 4096,8 4096,4 8192,4") 2>&1 \
  | grep -vE "^WARNING|bfc_allocator" | tee $OUT/ce_bench.txt
BASE=.peers/base bash benchmarks/proxies_vs_titan.sh
PROXIES=mixtral_width TOP=60 OUT=$OUT/prof bash benchmarks/profile_proxies.sh
