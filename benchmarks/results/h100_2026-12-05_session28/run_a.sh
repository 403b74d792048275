#!/bin/bash
# Session 28, call a: session 27's run_a.sh split in two device calls (10 minutes each at most):
# this one the check and the A/B, a second the benchmark. Ran on an H100 (carry [".whl"]: the
# device image lacks ml_collections), so "tuned" is the H100 table's tile (no half or swap-AB
# tiles): a1_check/, a2_ab/ here (its --write-best table not adopted); run_c.sh then took the
# H200 table's tiles. The benchmark call (run_b) was dropped: merging was slower.
# Merged tails (TileConfig.merge_tail), dealt to the SMs apart from the light tiles
# (`_balanced_order`, session 28), on Qwen3's two shapes. nvidia-h200 (may land on an H100).
#  a1_check/: grouped_gemm.py's small-shape check with merged tails (shared and ping-pong, the
#    rest); a WRONG stops the call.
#  a2_ab/: Qwen3 fc1/fc2 forward and dgrad on Dirichlet(1) groups: the table's tile, the same with tails
#    of up to 64 and up to 32 rows merged at the stages that fit (an item that does not fit is
#    skipped), the table's tile at 4 stages (what fewer stages alone cost), and the
#    equal-groups einsum, in turns 5 times, medians; --write-best stores each call's fastest
#    tile (a2_ab/tiles.json).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv,noheader
O=$OUT/a1_check; mkdir -p $O
timeout 120 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" > $O/check.log
tail -n 8 $O/check.log
grep -q WRONG $O/check.log && exit 1
O=$OUT/a2_ab; mkdir -p $O
timeout 440 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad \
  --min-time 0.5 --repeat 5 --write-best \
  --sweep "tuned merge_tail=64,stages=3 merge_tail=64,stages=4 merge_tail=32,stages=3 merge_tail=32,stages=5 stages=4 einsum" \
  2>&1 | grep -vE "$F" > $O/qwen3.log
grep -hE "median|WRONG|skipped|stored" $O/qwen3.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
