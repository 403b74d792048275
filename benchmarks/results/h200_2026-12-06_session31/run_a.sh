#!/bin/bash
# NOT RUN: every H200 call of session 31 (ten calls, 04:45-06:46 UTC, needs_h200, nine of them tried and failed to start one; this script and run_c.sh) got no machine.
# Session 31, call a (needs_h200), at this tree: session 29's call c's c0 (grouped_gemm.py's small-shape
# check of every kernel variant against float64), then run_c.sh (this tree's proxies and torchtitan's,
# same call: the acceptance measurement on an H200).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
(source benchmarks/device_env.sh; mkdir -p $OUT/c0_check; cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py \
  --check-only 2>&1 | grep -vE '^WARNING|bfc_allocator' > $OUT/c0_check/check.log; tail -n 6 $OUT/c0_check/check.log)
bash benchmarks/results/h200_2026-12-06_session31/run_c.sh
