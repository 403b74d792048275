#!/bin/bash
# Ran on commit 7bdcba2 (ping-pong + 2-CTA clusters; grouped_gemm_profile.py --trace; wgrad steps
# from the 8-row grid), carrying .peers/base = tree of 250f582 (the session's start).
# Session 14, call b (b1_pingpong_cluster/): (1) the kernel check incl. ping-pong+cluster tiles;
# (2) each Qwen3 call, same process: the tuned tile, ping-pong, ping-pong with the 2-CTA cluster in
# three tile orders, the einsum; (3) a trace of 20 calls each of the tuned tile and the einsum on
# fc1/fc2 forward and wgrad: device time per call by kernel (the tile schedule's XLA kernels) and gaps;
# (4) wgrad with the tuned tiles, 250f582 (steps from the tile_k grid) against this tree, A B A B.
set -u -o pipefail
O=$OUT/b1_pingpong_cluster; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
P="python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3"
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
timeout 240 $P --orient fc1,fc2 --op fwd,dgrad,wgrad --sweep "tuned 128,6,16,1,pingpong=1,cluster=1 \
  128,6,16,1,pingpong=1,cluster=2 128,6,8,1,pingpong=1,cluster=2 128,6,4,0,pingpong=1,cluster=2 einsum" \
  2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
timeout 120 $P --orient fc1,fc2 --op fwd,wgrad --sweep "tuned einsum" --trace \
  2>&1 | grep -vE "$F" | $S | tee $O/trace.log
rm -rf /tmp/base && mkdir -p /tmp/base && cp -rL "$R"/.peers/base/{moejax,benchmarks} /tmp/base/
for r in 1 2; do
  for t in base pp; do
    echo "tree $t" | tee -a $O/wgrad_ab.log
    PYTHONPATH=/tmp/$t:/tmp/site timeout 60 python3 /tmp/$t/benchmarks/grouped_gemm_profile.py --shape qwen3 \
      --orient fc1,fc2 --op wgrad --sweep tuned 2>&1 | grep -vE "$F" | $S | tee -a $O/wgrad_ab.log
  done
done
