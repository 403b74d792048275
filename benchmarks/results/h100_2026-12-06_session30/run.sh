#!/bin/bash
# Session 30 (2026-12-06): the device calls that wrote this folder, from the repo root at commit
# 9b53612, carrying [".whl", ".peers"] (prepared as session 29's run_a.sh header says). Each call
# asked for an H200 and got an H100 80GB HBM3 (the first start after 11 failed calls this session, 02:03-03:53 UTC).
#  a1_same_call_titan/: session 29's call a, short form (this tree and torchtitan, no BASE tree):
#    BASE= bash benchmarks/results/h200_2026-12-05_session29/run_a.sh
#  b2_bench/: session 29's call b as two calls, one per loop item here (68 s and 153 s on the H100):
set -u -o pipefail
source benchmarks/device_env.sh; mkdir -p $OUT/b2_bench; cd /tmp
for s in qwen3 mixtral,dsv3; do
  timeout 230 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes $s 2>&1 \
    | grep -vE '^WARNING|bfc_allocator' | tee $OUT/b2_bench/bench_${s/,/_}.log | grep -v "^{"
done
