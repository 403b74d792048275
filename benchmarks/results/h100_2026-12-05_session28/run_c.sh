#!/bin/bash
# Session 28, call c (ran on the H100 that call a got; carry [".whl"]): merged tails on the H200
# table's forward tiles for Qwen3, each beside its control at the same ring depth (merging
# shrinks the ring: 128 + merge_tail rows a slot), in turns 5 times, medians.
#  fc1: the 256-wide shared tile with half and swap-AB tiles, 4 and 3 stages; merged 64 / 32 at 3.
#  fc2: the 128-wide ping-pong tile in 2-CTA clusters with swap-AB tiles, 6, 4 and 5 stages;
#       merged 64 at 4, merged 32 at 5.
source benchmarks/device_env.sh; cd /tmp; P=/tmp/pp/benchmarks/grouped_gemm_profile.py; mkdir -p $OUT/c
B1=grid_tile_width=8,half_tiles=1,swap_ab=1; B2=tile_n=128,grid_tile_width=8,pingpong=1,cluster=2,swap_ab=1
timeout 250 python3 $P --shape qwen3 --orient fc1 --op fwd --min-time 0.5 --repeat 5 \
  --sweep "$B1 $B1,stages=3 $B1,merge_tail=64,stages=3 $B1,merge_tail=32,stages=3 einsum" 2>&1 \
  | grep -vE '^WARNING|bfc_alloc' > $OUT/c/fc1.log
timeout 250 python3 $P --shape qwen3 --orient fc2 --op fwd --min-time 0.5 --repeat 5 \
  --sweep "$B2,stages=6 $B2,stages=4 $B2,merge_tail=64,stages=4 $B2,stages=5 $B2,merge_tail=32,stages=5 einsum" 2>&1 \
  | grep -vE '^WARNING|bfc_alloc' > $OUT/c/fc2.log
grep -hE 'median|WRONG|skipped' $OUT/c/*.log
