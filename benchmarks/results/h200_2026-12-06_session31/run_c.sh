#!/bin/bash
# NOT RUN: see run_a.sh's first line.
# Session 31, call c (needs_h200): session 29's call a in its short form, for a short device budget:
# this tree's proxies and torchtitan's in one call (the acceptance measurement on an H200).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
BASE= bash benchmarks/results/h200_2026-12-05_session29/run_a.sh
tail -n 12 $OUT/a1_same_call_titan/log.txt
