#!/bin/bash
# Ran on commit d7ffc1f (2-CTA cluster kernels, TileConfig.cluster; not in the tile table).
# Session 13, call e (e1_cluster/): 2-CTA clusters with the row operand multicast (the lever ncu
# showed in call d). (1) the kernel check with cluster tiles (stops here if any is wrong); (2) Qwen3's
# fc1/fc2 forward and wgrad and fc1's dgrad, same process: the shared 128x256 tile without and with
# the cluster, in two tile orders. The device time left (265 s) allows this one short call.
set -u -o pipefail
O=$OUT/e1_cluster; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
timeout 60 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
grep -q WRONG $O/check.log && exit 1
timeout 70 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,wgrad \
  --sweep "256,4,4,1,pingpong=0 256,4,4,1,pingpong=0,cluster=2 256,4,16,1,pingpong=0,cluster=2 256,4,16,1,pingpong=0" \
  2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
timeout 30 python3 $P --shape qwen3 --orient fc1 --op dgrad \
  --sweep "tuned cluster=2" 2>&1 | grep -vE "$F" | $S | tee -a $O/sweep.log
