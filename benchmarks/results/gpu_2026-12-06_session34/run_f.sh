#!/bin/bash
# Session 34, call f: call d's compile-only comparison on the final form of recompute_after_cotangent
# (refuses closed-over tracers; MLA passes its positions), this tree only.   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; cd /tmp/pp; D=$OUT/f1_after_final; mkdir -p $D
timeout 200 python3 benchmarks/memory.py --out $D --compile-only --layers 1 --micro-batch 4 --deadline 190 \
  --variants recompute_moe_act,recompute_core_attn 2>&1 | grep -vE '^WARNING|bfc_allocator' > $D/log.txt
tail -n 5 $D/log.txt
