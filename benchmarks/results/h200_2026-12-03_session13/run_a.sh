#!/bin/bash
# Ran on commit 59e30a6 (ping-pong consumers, TileConfig.pingpong).
# Session 13, call a (a1_pingpong/): (1) the kernel check on small shapes with the table's tiles and
# with ping-pong tiles (stops here if any is wrong); (2) each Qwen3 kernel call (Dirichlet(1) groups),
# same process: the tuned tile against ping-pong 128x128 tiles with a 6-stage ring in six tile
# orders; the fastest of each call goes into a copy of tiles.json; (3) the Qwen3 benchmark with those
# tiles (torch._grouped_mm, ours on equal groups, the equal-groups einsum).
set -u -o pipefail
O=$OUT/a1_pingpong; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
timeout 330 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --sweep "tuned 128,6,4,1,pingpong=1 128,6,8,1,pingpong=1 128,6,16,1,pingpong=1 128,6,4,0,pingpong=1 128,6,8,0,pingpong=1 128,6,16,0,pingpong=1" \
  --write-best 2>&1 | grep -vE "$F" | sed 's/TileConfig(//; s/tile_k=64, //' | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
