#!/bin/bash
# Session 42, call b: QK-clip's largest-logit pass, before (a [256 queries, all keys] block at a time) and after
# (256 x 256 blocks at or below the diagonal only) in the same call, at the Qwen3-30B-A3B-width proxy with AdamW
# (no QK-clip, QK-clip after, QK-clip before). Needs qk_clip_before.py beside this script (moejax/layers/qk_clip.py
# at 1a6537f, untracked: `git show 1a6537f:moejax/layers/qk_clip.py > .../qk_clip_before.py`). Any Hopper card; ~250 s.
#   carry [".whl"]
set -u -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source benchmarks/device_env.sh
filt() { grep -vE '^WARNING|bfc_allocator|^I[0-9]{4}|^W[0-9]{4}'; }
O=$OUT/c1_qk_clip; mkdir -p $O
step() {  # tag, overrides...
  local tag=$1; shift
  (cd /tmp/pp && timeout 150 python3 benchmarks/train_step.py --config configs/proxies/qwen3_30b_width.py "$@" \
     --steps 10 --warmup 2 --tag $tag --out $O/steps.jsonl) 2>&1 | filt > $O/$tag.log
  tail -n 3 $O/$tag.log
}
step adam
step adam_qkclip_after --config.model.qk_clip=True
cp benchmarks/results/gpu_2026-12-07_session42/qk_clip_before.py /tmp/pp/moejax/layers/qk_clip.py
step adam_qkclip_before --config.model.qk_clip=True
