#!/bin/bash
# Session 35, call a: module-level selective recompute (layernorm, moe; and the planner's selective
# set core_attn+moe_act+layernorm) tied to the cotangent (layers/memory.py remat_module through
# recompute_after_cotangent) against nn.remat (the tree before, c96352c, carried as .peers/base):
# compiled memory of 2 Mixtral-width layers at micro-batch 4, both trees; then this tree's
# Mixtral-width proxy step time and peak memory without recompute and with `moe`. "This tree" is
# 76a95fa (the module-level form was reverted after this call: it saved nothing more).
#   mkdir -p .peers/base && git archive c96352c moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   carry [".whl", ".peers/base"]
set -u -o pipefail
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
source benchmarks/device_env.sh
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
mem() {  # TREE NAME
  mkdir -p $OUT/a1_$2; (cd $1 && PYTHONPATH=$1:/tmp/site timeout 230 python3 benchmarks/memory.py --out $OUT/a1_$2 \
    --compile-only --layers 1 --micro-batch 4 --deadline 220 \
    --variants recompute_layernorm,recompute_moe,selective_recompute 2>&1 \
    | grep -vE '^WARNING|bfc_allocator' > $OUT/a1_$2/log.txt); tail -n 6 $OUT/a1_$2/log.txt
}
mem /tmp/base before; mem /tmp/pp after
cd /tmp/pp; mkdir -p $OUT/a2_steps
for v in none moe; do
  extra=(); [ $v = moe ] && extra=(--config.train.recompute_granularity=selective "--config.train.recompute_modules=('moe',)")
  timeout 100 python3 benchmarks/train_step.py --config configs/proxies/mixtral_width.py --steps 10 --warmup 2 \
    --tag mixtral-$v --out $OUT/a2_steps/steps.jsonl "${extra[@]}" > $OUT/a2_steps/$v.log 2>&1 || echo "$v failed"
  grep -vE '^WARNING|bfc_allocator|^I0|^W0' $OUT/a2_steps/$v.log | tail -n 3
done
