#!/bin/bash
# NOT RUN: the H100 lease stopped answering before it started, and no machine came after. Ready for a later session.
# Session 40, call c (an H100 came for the H200 acceptance call again; tree 8c13383): Megatron's scaled init of
# the output projections (this session) in bf16 on a GPU: the tiny recipe 100 steps through train.py, and the
# DeepSeek-V3-width proxy (MLA, dense first layer, shared experts) 6 steps through benchmarks/train_step.py.
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/c1_init; mkdir -p $O
(cd /tmp/pp && timeout 200 python3 train.py --config configs/tiny_moe.py --workdir /tmp/s40c --config.model.dtype=bfloat16 \
  --config.train.train_iters=100 --config.train.log_interval=25) 2>&1 | grep -vE '^WARNING|bfc_allocator' > $O/tiny.log
echo "rc=$?" | tee -a $O/tiny.log; grep -E "^step" $O/tiny.log | cut -c1-120
(cd /tmp/pp && timeout 300 python3 benchmarks/train_step.py --config configs/proxies/deepseek_v3_width.py --steps 3 \
  --warmup 3 --tag dsv3 --out $O/dsv3.jsonl) 2>&1 | grep -vE '^WARNING|bfc_allocator' > $O/dsv3.log
echo "rc=$?" | tee -a $O/dsv3.log; tail -n 4 $O/dsv3.log
