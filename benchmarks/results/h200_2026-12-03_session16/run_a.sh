#!/bin/bash
# Ran on commit 42ba469 (half tiles back: TileConfig.half_tiles with the balanced unit order).
# Session 16, call a (a1_half_tiles/): (1) the kernel check incl. ping-pong+cluster+half tiles (stops
# here if any is wrong); (2) each Qwen3 forward/dgrad call, same process: the tuned tile and the same
# with half tiles, twice in turn, the shared 256-wide tile with half tiles, the equal-groups einsum;
# the fastest of each call into a copy of tiles.json (--write-best), copied out; (3) the Qwen3
# benchmark with those tiles (torch._grouped_mm, ours on equal groups, the equal-groups einsum).
set -u -o pipefail
O=$OUT/a1_half_tiles; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
timeout 260 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad \
  --sweep "tuned half_tiles=1 tuned half_tiles=1 256,4,8,1,pingpong=0,cluster=1,half_tiles=1 einsum" \
  --write-best 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
