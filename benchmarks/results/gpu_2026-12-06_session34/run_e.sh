#!/bin/bash
# Session 34, call e: call c's selective-recompute cases again after recompute_after_cotangent
# (moe_act and core_attn now recomputed behind the cotangent); they replace those rows of
# tests/plan/golden/plan_memory_h100.jsonl.   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; cd /tmp/pp; D=$OUT/e1_plan_memory_selective; mkdir -p $D
pm() { timeout 200 python3 benchmarks/plan_memory.py --out $D/cases.jsonl "$@" 2>&1 | grep -vE '^WARNING|bfc_allocator|^I0|^W0' >> $D/log.txt; }
pm --config configs/proxies/mixtral_width.py --layers 1,2 --micro_batch 4 --recompute selective
pm --config configs/proxies/qwen3_30b_width.py --layers 2,4 --micro_batch 4 --recompute selective
grep -E "^ +[0-9]+ +[0-9]+ |^==|Error|error" $D/log.txt | sort -u
