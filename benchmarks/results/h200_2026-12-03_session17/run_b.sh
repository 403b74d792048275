#!/bin/bash
# Ran on commit 613d099 (as call a; tiles.json unchanged: the tuned tiles won every call in a).
# Session 17, call b (b1_tile_m256_where/): where the 256-row tile stands, each call in one process:
# (1) Qwen3 fc1/fc2 forward on near-equal groups (alpha=100), sustained 1 s timings with the SM clock
# and power: tuned, 256-row tiles in clusters with the consumers storing in turns and not, einsum;
# (2) Mixtral's four forward/dgrad calls (groups of ~4096 rows fill 256-row tiles): tuned, 256-row tiles
# in clusters in the tuned order and one other, einsum; (3) Qwen3's wgrad: tuned, 256-row tiles with
# and without the cluster, einsum.
set -u -o pipefail
O=$OUT/b1_tile_m256_where; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
P="python3 /tmp/pp/benchmarks/grouped_gemm_profile.py"
M="tile_n=128,stages=4,tile_m=256,pingpong=0,cluster=2"
timeout 150 $P --shape qwen3 --orient fc1,fc2 --op fwd --alpha 100 --min-time 1 --clocks \
  --sweep "tuned $M,half_tiles=0 $M,half_tiles=0,alternate_epilogues=0 einsum" 2>&1 | grep -vE "$F" | $S | tee $O/qwen3_equal.log
timeout 200 $P --shape mixtral --orient fc1,fc2 --op fwd,dgrad \
  --sweep "tuned $M $M,grid_tile_width=16,grid_minor_dim=1 einsum" 2>&1 | grep -vE "$F" | $S | tee $O/mixtral.log
timeout 150 $P --shape qwen3 --orient fc1,fc2 --op wgrad \
  --sweep "tuned $M,grid_tile_width=16,grid_minor_dim=0,cluster=1 $M,grid_tile_width=16,grid_minor_dim=0 $M,grid_tile_width=8,grid_minor_dim=1 einsum" \
  2>&1 | grep -vE "$F" | $S | tee $O/qwen3_wgrad.log
