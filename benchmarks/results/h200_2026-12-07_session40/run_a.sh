#!/bin/bash
# Session 40, call a: issue 18's acceptance on this tree, H200 only (exits 3 at once on another card, so an
# H100 costs only its start): session 38's run_a.sh, whose H200 part is session 25's a1_check/ and
# a2_same_call_titan/ with BASE= (no before tree) and Qwen3's two grouped-GEMM shapes in turns (b1_bench/),
# after its short functional part (c1_functional/). ~450 s on an H200.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 || { nvidia-smi -L; exit 3; }
exec bash benchmarks/results/h200_2026-12-06_session38/run_a.sh
