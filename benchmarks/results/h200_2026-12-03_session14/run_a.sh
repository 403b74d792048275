#!/bin/bash
# Ran on commit 9373ba2 (2-CTA cluster kernels, TileConfig.cluster; not in the tile table).
# Session 14, call a (a1_cluster/): (1) the kernel check on small shapes with the table's tiles,
# ping-pong tiles and 2-CTA cluster tiles (stops here if any is wrong); (2) each Qwen3 kernel call
# (Dirichlet(1) groups), same process: the tuned tile, the shared 128x256 tile without and with the
# cluster in three tile orders, and the equal-groups einsum; (3) the DeepSeek-V3 benchmark (EP32
# shapes: not yet run on the H200), with torch._grouped_mm and the einsum.
set -u -o pipefail
O=$OUT/a1_cluster; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
P="python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3"
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
C="256,4,4,1,pingpong=0,cluster=2 256,4,16,1,pingpong=0,cluster=2 256,4,8,0,pingpong=0,cluster=2"
timeout 150 $P --orient fc1 --op fwd,dgrad,wgrad --sweep "tuned 256,4,4,1,pingpong=0 $C einsum" \
  2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
timeout 100 $P --orient fc2 --op fwd,wgrad --sweep "tuned 256,4,4,1,pingpong=0 $C einsum" \
  2>&1 | grep -vE "$F" | $S | tee -a $O/sweep.log
timeout 60 $P --orient fc2 --op dgrad --sweep "tuned 128,6,8,1,pingpong=0,cluster=2 128,6,16,1,pingpong=0,cluster=2 einsum" \
  2>&1 | grep -vE "$F" | $S | tee -a $O/sweep.log
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --shapes dsv3 --skip-xla 2>&1 \
  | grep -vE "$F|^\{" | tee $O/bench.log
