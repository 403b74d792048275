#!/bin/bash
# Ran on 9019eac's tree; the call asked for an H200 and got an H100 80GB HBM3 (JAX 0.11.2).
# Session 36, call c: calls a and b in one call for a short device budget, without the before tree:
# the check, this tree's proxies and torchtitan's (a2_same_call_titan/), then the six grouped-GEMM
# shapes (b1_bench/).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
D=benchmarks/results/h100_2026-12-06_session36
BASE= bash $D/run_a.sh || exit 1
tail -n 5 $OUT/a2_same_call_titan/log.txt
bash $D/run_b.sh
