#!/bin/bash
# Session 34, call b: the layout planner's memory estimate against the compiled one-GPU train step
# (benchmarks/plan_memory.py: XLA's memory_analysis, nothing allocated) at the proxies' widths,
# recompute none / selective / full; cases kept under 80 GB so XLA's rematerialization stays out.
# On an H200 the acceptance proxies and torchtitan run first (call a got an H100).
#   carry [".whl", ".peers/torchtitan"]
set -u -o pipefail
name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); echo "device: $name"
if [[ "$name" == *H200* ]]; then
  BASE= OUT=$OUT/b0_same_call_titan bash benchmarks/proxies_vs_titan.sh
  tail -n 14 $OUT/b0_same_call_titan/log.txt
fi
source benchmarks/device_env.sh; cd /tmp/pp; D=$OUT/b1_plan_memory; mkdir -p $D
pm() { timeout 200 python3 benchmarks/plan_memory.py --out $D/cases.jsonl "$@" 2>&1 | grep -vE '^WARNING|bfc_allocator|^I0|^W0' >> $D/log.txt; }
pm --config configs/proxies/mixtral_width.py --layers 1,2 --micro_batch 4 --recompute none,selective,full
pm --config configs/proxies/mixtral_width.py --layers 2 --micro_batch 1
pm --config configs/proxies/qwen3_30b_width.py --layers 2,4 --micro_batch 4 --recompute none,selective,full
pm --config configs/proxies/qwen3_30b_width.py --layers 4 --micro_batch 1
grep -E "^ +[0-9]+ +[0-9]+ |^==|Error|error" $D/log.txt | sort -u | head -40
