#!/bin/bash
# Ran on commit 1da92fd (TileConfig.tile_m=256: cooperative 256 x 128 tiles, each consumer 128 rows).
# Session 17, call a (a1_tile_m256/): (1) the kernel check incl. 256-row tiles in clusters with half
# tiles (stops here if any is wrong); (2) each Qwen3 forward/dgrad call, same process: the tuned tile,
# 256-row tiles with and without the 2-CTA cluster, two tile orders, with and without half tiles, the
# equal-groups einsum; the fastest of each call into a copy of tiles.json (--write-best), copied out;
# (3) the Qwen3 benchmark with those tiles.
set -u -o pipefail
O=$OUT/a1_tile_m256; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
M="tile_m=256,pingpong=0"
timeout 280 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad \
  --sweep "tuned 128,4,8,1,$M,cluster=1,half_tiles=1 128,4,8,1,$M,cluster=2,half_tiles=1 128,4,16,1,$M,cluster=2,half_tiles=1 128,4,8,1,$M,cluster=2,half_tiles=0 einsum" \
  --write-best 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
