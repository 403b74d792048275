#!/bin/bash
# Session 40, call a: issue 18's acceptance on this tree, H200 only (exits 3 at once on another card,
# so an H100 costs only its start). a1_check/ and a2_same_call_titan/ as session 25's call a with
# BASE= (no before tree), then Qwen3's two grouped-GEMM shapes in turns (b1_bench/).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { nvidia-smi -L; exit 3; }
source benchmarks/device_env.sh
BASE= bash benchmarks/results/h200_2026-12-05_session25/run_a.sh || exit 1
tail -n 5 $OUT/a2_same_call_titan/log.txt
O=$OUT/b1_bench; mkdir -p $O
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3) 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $O/bench.log
tail -n 6 $O/bench.log
