#!/bin/bash
# Session 35, call b: Mixtral-width proxy step time with recompute_modules=('moe',) through nn.remat
# (the tree before, c96352c, carried as .peers/base) and tied to the cotangent (this tree: 76a95fa),
# same call, in turns.
#   carry [".whl", ".peers/base"]
set -u -o pipefail
echo "device: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
source benchmarks/device_env.sh
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL .peers/base/{moejax,configs,train.py,benchmarks} /tmp/base/
mkdir -p $OUT/b1_steps
for t in base pp base pp; do
  (cd /tmp/$t && PYTHONPATH=/tmp/$t:/tmp/site timeout 100 python3 benchmarks/train_step.py --config configs/proxies/mixtral_width.py \
    --steps 10 --warmup 2 --tag moe-$t --out $OUT/b1_steps/steps.jsonl --config.train.recompute_granularity=selective \
    "--config.train.recompute_modules=('moe',)" > $OUT/b1_steps/$t.log 2>&1 || echo "$t failed")
  grep -vE '^WARNING|bfc_allocator|^I0|^W0' $OUT/b1_steps/$t.log | tail -n 2 | head -1
done
