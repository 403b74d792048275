#!/bin/bash
# NOT RUN: see run_a.sh's first line.
# Session 31, call c (needs_h200): call a without its float64 check, for a short device budget:
# this tree's proxies and torchtitan's in one call (the acceptance measurement on an H200).
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/; carry [".whl", ".peers"]
set -u -o pipefail
BASE= OUT=$OUT/a1_same_call_titan bash benchmarks/proxies_vs_titan.sh
tail -n 12 $OUT/a1_same_call_titan/log.txt
