#!/bin/bash
# Ran on commit 1fec920.
# Session 20, call e: swap_all with 64-row height steps (no wgmma serialization) against the table's
# tiles and the equal-groups einsum, in turns.
#  e1_ab/: Qwen3 fc1/fc2 forward and dgrad, Dirichlet(1) groups, 3 turns.
#  e2_equal/: the same forwards on near-equal groups (alpha 100), 2 turns: the full tiles' speed.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
T="tile_n=128,pingpong=0,stages=4,swap_all=1"
O=$OUT/e1_ab; mkdir -p $O
timeout 300 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 --repeat 3 \
  --sweep "tuned $T,cluster=2 $T,cluster=1 einsum" 2>&1 | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
O=$OUT/e2_equal; mkdir -p $O
timeout 150 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd --alpha 100 --min-time 0.5 --repeat 2 \
  --sweep "tuned $T,cluster=2 einsum" 2>&1 | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
