#!/bin/bash
# Session 34, call c: call b's cases again with the planner's GPU form (gradients not held at once
# unless a step accumulates micro-batches, no separate update, the cross-entropy's working set),
# plus steps of 2 and 4 micro-batches (gradient accumulation); its cases.jsonl is the golden file
# tests/plan/golden/plan_memory_h100.jsonl.   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; cd /tmp/pp; D=$OUT/c1_plan_memory; mkdir -p $D
pm() { timeout 240 python3 benchmarks/plan_memory.py --out $D/cases.jsonl "$@" 2>&1 | grep -vE '^WARNING|bfc_allocator|^I0|^W0' >> $D/log.txt; }
M=configs/proxies/mixtral_width.py; Q=configs/proxies/qwen3_30b_width.py
pm --config $M --layers 1,2 --micro_batch 4 --recompute none,selective,full
pm --config $M --layers 2 --micro_batch 1
pm --config $M --layers 2 --micro_batch 2,1 --micro_batches 2,4
pm --config $Q --layers 2,4 --micro_batch 4 --recompute none,selective,full
pm --config $Q --layers 4 --micro_batch 1
pm --config $Q --layers 4 --micro_batch 2,1 --micro_batches 2,4
grep -E "^ +[0-9]+ +[0-9]+ |^==|Error|error" $D/log.txt | sort -u | head -40
