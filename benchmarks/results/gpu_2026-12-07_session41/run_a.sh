#!/bin/bash
# Session 41, one call for whichever card comes: on an H200 issue 18's acceptance rerun (session 40's
# run_a.sh, ~450 s), on any other card this session's Muon measurements (run_muon.sh, ~250 s).
#   carry [".whl", ".peers"]
if nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200; then
  exec bash benchmarks/results/h200_2026-12-07_session40/run_a.sh
fi
exec bash benchmarks/results/gpu_2026-12-07_session41/run_muon.sh
