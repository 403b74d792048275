#!/bin/bash
# Session 42, one call: Qwen3's two grouped-GEMM shapes in turns (issue 18's unmet point, b1_bench/: the call
# session 41's device time did not reach), then session 41's Muon and QK-clip measurements (run_muon.sh).
# Any Hopper card (the card is printed first); ~500 s.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source benchmarks/device_env.sh
O=$OUT/b1_bench; mkdir -p $O
(cd /tmp && timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --skip-check --skip-xla --shapes qwen3) 2>&1 \
  | grep -vE '^WARNING|bfc_allocator' > $O/bench.log
tail -n 6 $O/bench.log
exec bash benchmarks/results/gpu_2026-12-07_session41/run_muon.sh
