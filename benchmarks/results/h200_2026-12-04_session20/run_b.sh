#!/bin/bash
# Ran on commit 180c911.
# Session 20, call b: why are swap_all tiles slower (call a)? Qwen3 fc1 forward.
#  b1_equal/: near-equal groups (alpha 100): the table's tile vs swap_all, in turns 3 times, so the
#    full tiles' speed apart from the remainders.
#  b2_ncu/: ncu warp-stall samples per SASS instruction, swap_all tile, Dirichlet(1) groups, plus the
#    instruction mix of its epilogue (STS/LDS/transposed stores) by count.
set -u -o pipefail
source benchmarks/device_env.sh
cd /tmp
F='^WARNING|bfc_allocator'
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
T="tile_n=128,pingpong=0,stages=4,swap_all=1"
O=$OUT/b1_equal; mkdir -p $O
timeout 150 python3 $P --shape qwen3 --orient fc1 --op fwd --alpha 100 --min-time 0.5 --repeat 3 \
  --sweep "tuned $T,cluster=2 $T,cluster=2,alternate_epilogues=0" 2>&1 | grep -vE "$F" > $O/qwen3.log
grep -h median $O/*.log
O=$OUT/b2_ncu; mkdir -p $O
S="$R/benchmarks/results/h200_2026-12-03_session17/d1_ncu_source/top_stalls.py"
timeout 150 ncu --clock-control none -k "regex:body" -c 1 --section SourceCounters --section WarpStateStats \
  --section SpeedOfLight --page source --print-source sass --csv python3 $P --shape qwen3 --orient fc1 --op fwd \
  --sweep "$T,cluster=2" --min-time 0.01 > $O/sass.csv 2> $O/err.txt
gzip -f $O/sass.csv
python3 $S $O/sass.csv.gz 40 | tee $O/top.txt
