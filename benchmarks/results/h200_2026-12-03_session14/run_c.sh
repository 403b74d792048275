#!/bin/bash
# Ran on commit 165cb5e. Session 14, call c (c1_tiles/): (1) the kernel check; (2) each Qwen3 call,
# same process: the tuned tile against ping-pong with 2-CTA clusters in two tile orders, twice in
# turn; the fastest of each call goes into a copy of tiles.json (--write-best), copied out; (3) the
# Qwen3 benchmark with those tiles (torch._grouped_mm, ours on equal groups, the equal-groups einsum).
set -u -o pipefail
O=$OUT/c1_tiles; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
PC="128,6,16,1,pingpong=1,cluster=2 128,6,8,1,pingpong=1,cluster=2"
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --sweep "tuned $PC tuned $PC" --write-best 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
