#!/bin/bash
# Ran on commit 23aa4df.
# Session 21, call a: wgrad's half steps (TileConfig.half_steps: 64-byte swizzled ring slots, so a
# step whose rows of the group fit in one 32-row half runs a 32-deep wgmma).
#  a1_check/: grouped_gemm.py's small-shape check (all variants, "steps" ones included) vs float64.
#  a2_ab/: Qwen3 fc1/fc2 wgrad, Dirichlet(1) groups: the table's tile, it with half steps, ping-pong
#    in clusters with half steps, the equal-groups einsum; in turns 3 times, medians last.
#  a3_equal/: the same on near-equal groups (alpha 100): what the 64-byte swizzle costs by itself.
#  a4_others/: Mixtral and DeepSeek-V3 wgrad, the table's tile with and without half steps.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
timeout 240 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" > $O/check.log
tail -n 8 $O/check.log
grep -q WRONG $O/check.log && exit 1
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/a2_ab; mkdir -p $O
timeout 150 python3 $P --shape qwen3 --orient fc1,fc2 --op wgrad --min-time 0.5 --repeat 3 \
  --sweep "tuned half_steps=1 tile_n=128,stages=6,pingpong=1,cluster=2,half_steps=1 einsum" 2>&1 \
  | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
O=$OUT/a3_equal; mkdir -p $O
timeout 80 python3 $P --shape qwen3 --orient fc1,fc2 --op wgrad --alpha 100 --min-time 0.5 --repeat 2 \
  --sweep "tuned half_steps=1 einsum" 2>&1 | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
O=$OUT/a4_others; mkdir -p $O
for S in mixtral dsv3; do
  timeout 80 python3 $P --shape $S --orient fc1,fc2 --op wgrad --min-time 0.5 --repeat 2 \
    --sweep "tuned half_steps=1" 2>&1 | grep -vE "$F" > $O/$S.log
done
grep -h median $O/*.log
