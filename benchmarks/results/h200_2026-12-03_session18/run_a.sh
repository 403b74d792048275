#!/bin/bash
# Ran on commit 8152256 (kernels as in b52aed3: the coords-once refactor's first run on a GPU).
# Session 18, call a (runs session 17's prepared call g, run_g.sh, as a2).
#  a1_speed/: Qwen3 fc1/fc2 fwd/dgrad/wgrad, the table's tiles against the equal-groups einsum, to see
#    that b52aed3 kept session 17's speed.
#  a2_first_step_waits/: session 17's prepared call g. Do the consumers' waits for data (session 17
#    call d: 12-15% of warp-stall samples) fall on a tile's first k-step or inside the tile? ncu
#    warp-stall samples per SASS instruction on Qwen3 fc2's forward as is, then fc2's and fc1's forward
#    with peel_first_step.py applied to the device's copy of mosaic.py (the first k-step of each tile
#    peeled out of the loop, same numbers), so the first step's wait is its own instruction.
set -u -o pipefail
source benchmarks/device_env.sh
H=$R/benchmarks/results/h200_2026-12-03_session17
T=$R/benchmarks/results/h200_2026-12-03_session17/d1_ncu_source/top_stalls.py
cd /tmp
F='^WARNING|bfc_allocator'
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
O=$OUT/a1_speed; mkdir -p $O
timeout 150 python3 $P --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad --sweep "tuned einsum" 2>&1 \
  | grep -vE "$F" | tee $O/sweep.log
O=$OUT/a2_first_step_waits; mkdir -p $O
prof() {  # $1: name, $2: orient
  timeout 90 ncu --clock-control none -k "regex:body" -c 1 --section SourceCounters --section WarpStateStats \
    --page source --print-source sass --csv python3 $P --shape qwen3 --orient $2 --op fwd --sweep tuned \
    --min-time 0.01 > $O/$1_sass.csv 2> $O/$1_err.txt
  gzip -f $O/$1_sass.csv
  python3 $T $O/$1_sass.csv.gz 30 | tee $O/$1_top.txt
}
prof qwen3_fc2_asis fc2
python3 $H/peel_first_step.py /tmp/pp/moejax/kernels/grouped_gemm/mosaic.py || exit 1
timeout 60 python3 $P --shape qwen3 --orient fc2,fc1 --op fwd --sweep tuned 2>&1 | grep -vE "$F" | tee $O/peeled_speed.log
prof qwen3_fc2_peeled fc2
prof qwen3_fc1_peeled fc1
