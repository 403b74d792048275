#!/bin/bash
# Session 10, call c: the cross-entropy softmax passes, XLA against the Pallas Triton kernel
# (kernels/cross_entropy.py), a few block/warp choices; then both proxies from HEAD 45636dc
# (.peers/base) and from this tree in the same call (no torchtitan, no tiny run).
source benchmarks/device_env.sh
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/cross_entropy.py --sweep "4096,8 8192,8 2048,4 8192,16 4096,4") 2>&1 \
  | grep -vE "^WARNING|bfc_allocator" | tee $OUT/ce_bench.txt
BASE=.peers/base TINY=0 TITAN=none bash benchmarks/proxies_vs_titan.sh
