#!/bin/bash
# Ran on commit 89f7c2f (kernels as in 662e539: both of this session's kernel changes reverted).
# Session 17, call f (f1_ring_depth/): is the consumers' wait for data (call d) load latency? Ring depth
# against speed, each call in one process: Qwen3 fc2 forward/dgrad with the table's ping-pong tiles at
# 4, 5 and 6 slots (6 = the table's) and fc1 forward with its shared 128x256 tile at 3 and 4 slots.
set -u -o pipefail
O=$OUT/f1_ring_depth; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
P="python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3"
timeout 120 $P --orient fc2 --op fwd,dgrad --sweep "stages=4 stages=5 stages=6 stages=4 stages=5 stages=6" 2>&1 \
  | grep -vE "$F" | $S | tee $O/sweep.log
timeout 80 $P --orient fc1 --op fwd --sweep "stages=3 stages=4 stages=3 stages=4" 2>&1 | grep -vE "$F" | $S | tee -a $O/sweep.log
