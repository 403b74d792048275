#!/bin/bash
# Ran on commit eb06473 (tiles.json as before this session: no ping-pong entry).
# Session 13, call b (b1_pingpong_ab/): is call a's ping-pong gain real, and where is the gap to the
# einsum? (1) each Qwen3 kernel call, Dirichlet(1) groups, same process, twice in turn: the tuned
# tile, ping-pong 128x128 tiles with 6 stages in two orders, and the batched einsum of the same call
# on equal groups; (2) the same with near-equal groups (alpha=100); (3) fc1 and fc2 forward
# sustained for 2 s per timing with the SM clock and board power (nvidia-smi) for the tuned tile,
# ping-pong and the einsum.
set -u -o pipefail
O=$OUT/b1_pingpong_ab; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
P16=128,6,16,1,pingpong=1; P8=128,6,8,1,pingpong=1
S="sed s/TileConfig(//;s/tile_k=64,//;s/alternate_epilogues=True,//"
timeout 100 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" | tee $O/check.log || exit 1
timeout 240 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --sweep "tuned $P16 $P8 einsum tuned $P16 $P8" 2>&1 | grep -vE "$F" | $S | tee $O/sweep.log
timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
  --alpha 100 --sweep "tuned $P16 einsum" 2>&1 | grep -vE "$F" | $S | tee $O/sweep_alpha100.log
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd \
  --min-time 2 --clocks --sweep "tuned $P16 einsum" 2>&1 | grep -vE "$F" | $S | tee $O/clocks.log
