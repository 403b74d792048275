#!/bin/bash
# Ran on commit 7175990 (the kept kernel state).
# Its tiles.json copy is not kept in the results: the tuned tiles won every call.
# Session 12, call d (c4_tiles_128_deep/): with the consumers storing in turns, how far apart they
# can run is bounded by the ring's depth (4 stages at tile_n=256). 128-wide tiles fit 6 stages.
# Each Qwen3 kernel call (Dirichlet(1) groups), same process: the tuned tile, 128-wide tiles with 6
# stages, with and without turns; the fastest of each call is written into a copy of
# tiles.json ($OUT/c4/tiles.json; adopted only if it wins).
set -u
O=$OUT/c4; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
timeout 170 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --sweep "tuned 128,6 128,6,alternate_epilogues=0" --write-best 2>&1 | grep -vE "^WARNING|bfc_allocator" \
  | sed 's/TileConfig(//; s/tile_k=64, //' | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
