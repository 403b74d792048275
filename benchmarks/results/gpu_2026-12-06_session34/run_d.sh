#!/bin/bash
# Session 34, call d: selective recompute tied to the cotangent (layers/memory.py
# recompute_after_cotangent, for remat_fn's modules: moe_act, core_attn, mla_up_proj) against
# jax.checkpoint (HEAD before it, carried as .peers/base): compiled memory of 2 Mixtral-width layers
# at micro-batch 4 with moe_act / core_attn, both trees; then this tree's Mixtral-width proxy step
# time and peak memory with and without moe_act.
#   mkdir -p .peers/base && git archive <before> moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers/base"]
set -u -o pipefail
source benchmarks/device_env.sh
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
mem() {  # TREE NAME
  mkdir -p $OUT/d1_$2; (cd $1 && PYTHONPATH=$1:/tmp/site timeout 200 python3 benchmarks/memory.py --out $OUT/d1_$2 \
    --compile-only --layers 1 --micro-batch 4 --deadline 190 --variants recompute_moe_act,recompute_core_attn 2>&1 \
    | grep -vE '^WARNING|bfc_allocator' > $OUT/d1_$2/log.txt); tail -n 5 $OUT/d1_$2/log.txt
}
mem /tmp/base before; mem /tmp/pp after
cd /tmp/pp; mkdir -p $OUT/d2_steps
for v in none moe_act; do
  extra=(); [ $v = moe_act ] && extra=(--config.train.recompute_granularity=selective "--config.train.recompute_modules=('moe_act',)")
  timeout 150 python3 benchmarks/train_step.py --config configs/proxies/mixtral_width.py --steps 10 --warmup 2 \
    --tag mixtral-$v --out $OUT/d2_steps/steps.jsonl "${extra[@]}" > $OUT/d2_steps/$v.log 2>&1 || echo "$v failed"
  grep -vE '^WARNING|bfc_allocator|^I0|^W0' $OUT/d2_steps/$v.log | tail -n 3
done
