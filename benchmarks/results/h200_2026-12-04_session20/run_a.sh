#!/bin/bash
# Ran on commit 180c911.
# Session 20, call a: swap_all tiles (every forward/dgrad tile swapped, up to 256 rows as
# wgmma's N, a group's last tile its rows rounded up to 32).
#  a1_check/: grouped_gemm.py's small-shape check of the new variants and the table's tiles.
#  a2_ab/: Qwen3 fc1/fc2 forward and dgrad, the table's tile against swap_all tiles (cluster 1
#    and 2, two grid widths) and the equal-groups einsum, in turns 3 times, medians last.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
O=$OUT/a1_check; mkdir -p $O
timeout 200 python3 /tmp/pp/benchmarks/grouped_gemm.py --check-only --variants table,tall,cluster+tall \
  2>&1 | grep -vE "$F" > $O/check.log
tail -n 12 $O/check.log
grep -q WRONG $O/check.log && exit 1
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/a2_ab; mkdir -p $O
T="tile_n=128,pingpong=0,stages=4,swap_all=1"
timeout 330 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad --min-time 0.5 --repeat 3 \
  --sweep "tuned $T,cluster=1 $T,cluster=2 $T,cluster=1,grid_tile_width=16 einsum" 2>&1 \
  | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
