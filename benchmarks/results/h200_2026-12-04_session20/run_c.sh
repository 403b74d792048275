#!/bin/bash
# Ran on commit 180c911.
# Session 20, call c: call b's ncu shows a WARPGROUP.DEPBAR after every HGMMA of the swap_all tile
# (ptxas serialized its wgmmas). ptxas's own report (MOSAIC_GPU_DUMP_PTXAS) for Qwen3 fc1's forward
# with the table's tile and with swap_all, to see why.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/c1_ptxas; mkdir -p $O/tuned $O/swap_all
for item in tuned "tile_n=128,pingpong=0,stages=4,swap_all=1,cluster=2"; do
  d=$O/tuned; [ "$item" = tuned ] || d=$O/swap_all
  MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_RESOURCES=1 MOSAIC_GPU_DUMP_TO=$d timeout 120 python3 $P --shape qwen3 \
    --orient fc1 --op fwd --sweep "$item" --min-time 0.01 > $d/run.log 2>&1
  ls -la $d | head
  grep -rhi "serializ\|warning\|registers\|spill" $d $d/run.log 2>/dev/null | sort | uniq -c | head -20
done
