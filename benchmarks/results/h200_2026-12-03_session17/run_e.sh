#!/bin/bash
# Ran on commit a08d263 (2-CTA clusters on row pairs, TileConfig.cluster_axis="m": the weights, or dy in
# wgrad, multicast to two neighbouring row tiles; call d showed the consumers waiting for their data).
# Session 17, call e (e1_row_pairs/): (1) the kernel check incl. row pairs with and without ping-pong
# (stops here if any is wrong); (2) each Qwen3 call, same process: the tuned tile, row pairs with the
# shared 128x256 tile (two orders) and with ping-pong, the equal-groups einsum; the fastest of each
# call into a copy of tiles.json (--write-best), copied out; (3) the Qwen3 benchmark with those tiles.
# (First run: the check, now seven variants, hit its 120 s timeout after 17 of 21 checks, all passing;
# rerun with 200 s.)
set -u -o pipefail
O=$OUT/e1_row_pairs; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
R="cluster=2,cluster_axis=m,half_tiles=0"
timeout 330 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --sweep "tuned 256,4,8,1,pingpong=0,$R 256,4,16,0,pingpong=0,$R 128,6,8,1,pingpong=1,$R einsum" \
  --write-best 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
