#!/bin/bash
# Session 34, call a (asks for an H200; sessions 28-33's calls got H100s). On an H200: issue 18's
# acceptance measurement at this tree, whose last H200 proxies run is session 25's (r): this tree's
# proxies and torchtitan's, same call. On an H100 (session 33 already ran the proxies there):
# compiled memory of one recompute module each at Mixtral width, 2 layers at micro-batch 4, to
# remeasure `moe_act` in its present form (fc2's input recomputed, as Megatron's; RESULTS.md "Memory
# options on one GPU" has the H200 table of its earlier form).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers/torchtitan"]
set -u -o pipefail
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "device: $name"
if [[ "$name" == *H200* ]]; then
  BASE= OUT=$OUT/a1_same_call_titan bash benchmarks/proxies_vs_titan.sh
  tail -n 14 $OUT/a1_same_call_titan/log.txt
else
  source benchmarks/device_env.sh; cd /tmp/pp; mkdir -p $OUT/a2_recompute_modules
  timeout 500 python3 benchmarks/memory.py --out $OUT/a2_recompute_modules --compile-only --layers 1 \
    --micro-batch 4 --deadline 460 \
    --variants recompute_core_attn,recompute_moe_act,recompute_layernorm,recompute_moe 2>&1 \
    | grep -vE '^WARNING|bfc_allocator' > $OUT/a2_recompute_modules/log.txt
  tail -n 9 $OUT/a2_recompute_modules/log.txt
fi
