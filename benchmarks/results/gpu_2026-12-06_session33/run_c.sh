#!/bin/bash
# Session 33, call c (an H100 80GB HBM3 came for both earlier calls): Qwen3's six grouped-GEMM calls
# still ran the H100 tiles of the first H100 session (plain shared 128 x 256 tiles, from before
# swap-AB, half tiles, ping-pong and clusters existed); the H200's tiles use those. Each call: the
# H100 entry against the H200's tile for the same call and neighbours of both, 0.5 s sustained,
# 3 turns, medians; --write-best stores the fastest for the H100. Then the Qwen3 benchmark shape
# with the new table, and the Qwen3-width whole-step proxy with the old table and the new one.
#   carry [".whl"]
set -u -o pipefail
source benchmarks/device_env.sh; mkdir -p $OUT/c1_tune $OUT/c2_bench; cd /tmp
rm -rf /tmp/old && cp -r /tmp/pp /tmp/old
P="timeout 110 python3 /tmp/pp/benchmarks/grouped_gemm_profile.py --shape qwen3 --min-time 0.5 --repeat 3 --write-best"
tune() {  # ORIENT OP SWEEP
  $P --orient $1 --op $2 --sweep "$3" 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/c1_tune/$1_$2.log
  grep -E "median|stored|WRONG|skipped" $OUT/c1_tune/$1_$2.log
}
tune fc1 fwd "tuned 256,4,8,1,half_tiles=1,swap_ab=1 swap_ab=1 half_tiles=1,swap_ab=1 128,6,8,1,pingpong=1,cluster=2,swap_ab=1 einsum"
tune fc2 fwd "tuned 128,6,8,1,pingpong=1,cluster=2,swap_ab=1 128,6,16,1,pingpong=1,cluster=2,swap_ab=1 swap_ab=1 half_tiles=1,swap_ab=1 einsum"
tune fc1 dgrad "tuned 128,6,16,1,pingpong=1,cluster=2,half_tiles=1,swap_ab=1 swap_ab=1 half_tiles=1,swap_ab=1 einsum"
tune fc2 dgrad "tuned 128,6,8,1,pingpong=1,half_tiles=1,swap_ab=1 128,6,8,1,pingpong=1,cluster=2,half_tiles=1,swap_ab=1 swap_ab=1 half_tiles=1,swap_ab=1 einsum"
tune fc1 wgrad "tuned 256,4,16,0 256,4,8,0 einsum"
tune fc2 wgrad "tuned 256,4,16,0 256,4,16,1 einsum"
cp /tmp/pp/moejax/kernels/grouped_gemm/tiles.json $OUT/c1_tune/tiles.json
timeout 150 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $OUT/c2_bench/bench_qwen3.log; grep -v "^{" $OUT/c2_bench/bench_qwen3.log | tail -4
for tree in old pp; do
  (cd /tmp/$tree && PYTHONPATH=/tmp/$tree:/tmp/site timeout 100 python3 benchmarks/train_step.py \
    --config configs/proxies/qwen3_30b_width.py --steps 15 --warmup 3 --tag "qwen3-$tree" --out "$OUT/c2_bench/steps.jsonl") \
    > /tmp/proxy_$tree.log 2>&1 || tail -5 /tmp/proxy_$tree.log
done
python3 - "$OUT/c2_bench/steps.jsonl" <<'PY'
import json, sys
for r in map(json.loads, open(sys.argv[1])):
  print(f"{r['tag']:12} {r['step_ms']:7.1f} ms  MFU {r.get('mfu', float('nan')):.3f}  peak {r['peak_gib']:5.1f} GiB  loss {r['loss']:.4f}  ({r['device']}, JAX {r['jax']})")
PY
