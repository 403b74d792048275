#!/bin/bash
# Ran on commit d16a8e9 (wgrad units dealt heaviest group first, boustrophedon: `_dealt`; half tiles
# in tiles.json), carrying .peers/base = tree of 42ba469 (before the deal).
# Session 16, call b (b1_dealt_wgrad/): (1) the kernel check; (2) wgrad with the tuned tiles, 42ba469
# against this tree, A B A B, on Qwen3 (Dirichlet(1) groups) and Mixtral (8 groups); (3) each Qwen3
# wgrad call in this tree, same process: tuned, shared 256-wide, ping-pong with and without the
# cluster, the einsum; fastest into a copy of tiles.json (--write-best), copied out; (4) the Qwen3
# and Mixtral benchmark with those tiles.
set -u -o pipefail
O=$OUT/b1_dealt_wgrad; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL "$R"/.peers/base/{moejax,benchmarks} /tmp/base/
for r in 1 2; do
  for t in base pp; do
    echo "tree $t" | tee -a $O/wgrad_ab.log
    for s in qwen3 mixtral; do
      PYTHONPATH=/tmp/$t:/tmp/site timeout 50 python3 /tmp/$t/benchmarks/grouped_gemm_profile.py --shape $s \
        --orient fc1,fc2 --op wgrad --sweep tuned 2>&1 | grep -vE "$F" | $S | tee -a $O/wgrad_ab.log
    done
  done
done
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op wgrad \
  --sweep "tuned 256,4,16,0,pingpong=0,cluster=1 128,6,8,1,pingpong=1,cluster=1 128,6,8,1,pingpong=1,cluster=2 tuned einsum" \
  --write-best 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
timeout 170 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes qwen3,mixtral --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
