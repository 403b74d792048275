#!/bin/bash
# Session 41: Muon (optim.optimizer='muon') on a GPU, any Hopper card (~300 s). Carry [".whl", ".peers"];
# .whl holds emerging_optimizers-0.3.0 (pure Python) beside the usual wheels.
#  m1_step/:   the Qwen3-30B-A3B-width proxy's whole train step with AdamW, Muon, and Muon with QK-clip
#              (MuonClip: one more q·k product per layer), same call
#  m2_update/: the optimizer update alone, moejax's AdamW and Muon against torch's fused AdamW and
#              emerging_optimizers' Muon (the class megatron-core's TensorParallelMuon subclasses, one
#              parameter per expert as Megatron holds them): Qwen3 width at 2 layers, Mixtral width at 1
#  m3_tiny/:   the tiny recipe through train.py with Muon, 30 steps
set -u -o pipefail
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name --format=csv,noheader
filt() { grep -vE '^WARNING|bfc_allocator|^I[0-9]{4}|^W[0-9]{4}'; }
O=$OUT/m1_step; mkdir -p $O
for run in "adam --config.optim.optimizer=adam" "muon --config.optim.optimizer=muon" \
           "muonclip --config.optim.optimizer=muon --config.model.qk_clip=True"; do set -- $run; tag=$1; shift
  (cd /tmp/pp && timeout 150 python3 benchmarks/train_step.py --config configs/proxies/qwen3_30b_width.py \
     "$@" --steps 10 --warmup 2 --tag qwen3_$tag --out $O/steps.jsonl) 2>&1 | filt > $O/$tag.log
  tail -n 3 $O/$tag.log
done
O=$OUT/m2_update; mkdir -p $O
for w in "qwen3_30b_width 2" "mixtral_width 1"; do set -- $w
  (cd /tmp/pp && timeout 120 python3 benchmarks/muon_update.py jax --config configs/proxies/$1.py \
     --config.model.num_layers=$2 --iters 10 --shapes $O/$1.json) 2>&1 | filt | tee $O/$1.log | tail -n 2
  (cd /tmp/pp && timeout 120 python3 benchmarks/muon_update.py torch --shapes $O/$1.json --iters 10) 2>&1 | filt \
     | tee -a $O/$1.log | tail -n 2
done
O=$OUT/m3_tiny; mkdir -p $O
(cd /tmp/pp && timeout 120 python3 train.py --config configs/tiny_moe.py --workdir /tmp/s41m \
   --config.optim.optimizer=muon --config.train.train_iters=30 --config.train.log_interval=10) 2>&1 | filt > $O/log.txt
grep -E "^step" $O/log.txt | cut -c1-120
