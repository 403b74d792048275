#!/bin/bash
# Session 27, call a: not run as such; session 28 ran it split in two calls, on an H100
# (results/h100_2026-12-05_session28/run_a.sh, run_c.sh). Merged tails (TileConfig.merge_tail)
# on Qwen3's two shapes.
#  a1_check/: grouped_gemm.py's small-shape check, now with merged tails (shared and ping-pong
#    with the rest); a WRONG stops the call.
#  a2_ab/: Qwen3 fc1/fc2 forward and dgrad on Dirichlet(1) groups: the table's tile, the same
#    with tails of up to 64 and of up to 32 rows merged, each at the stages that fit (the ring's
#    row slots hold 128 + merge_tail rows: the 256-wide shared tiles' 4 stages become 3, the
#    128-wide ping-pong tiles' 6 become 4 or 5; an item that does not fit is skipped), the
#    table's tile at 4 stages (what fewer stages alone cost) and the equal-groups einsum, in
#    turns 5 times, medians; --write-best stores each call's fastest tile (a2_ab/tiles.json:
#    adopt it into kernels/grouped_gemm/tiles.json only with a3_bench's numbers).
#  a3_bench/: grouped_gemm.py on Qwen3 with that table: ours, torch._grouped_mm and the
#    einsum, forward and forward+backward, in turns (the acceptance table's columns).
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only 2>&1 | grep -vE "$F" > $O/check.log
tail -n 8 $O/check.log
grep -q WRONG $O/check.log && exit 1
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/a2_ab; mkdir -p $O
timeout 420 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 --repeat 5 \
  --sweep "tuned merge_tail=64,stages=3 merge_tail=64,stages=4 merge_tail=32,stages=3 merge_tail=32,stages=5 stages=4 einsum" \
  --write-best 2>&1 \
  | grep -vE "$F" > $O/qwen3.log
grep -hE "median|WRONG|skipped|stored" $O/qwen3.log
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $O/tiles.json
O=$OUT/a3_bench; mkdir -p $O
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3 2>&1 \
  | grep -vE "$F" | tee $O/bench.log | grep -v "^{"
