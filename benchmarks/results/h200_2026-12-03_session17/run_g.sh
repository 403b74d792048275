#!/bin/bash
# NOT RUN in session 17 (ran in session 18 as call a2, h200_2026-12-03_session18/run_a.sh): session 17's device time ran out before it (prepared on commit cc4808d, kernels as in 662e539), with peel_first_step.py applied to the device's copy
# of mosaic.py only: the first k-step of each ragged_mm tile peeled out of the loop (same numbers).
# Session 17, call g (g1_first_step_waits/): do the consumers' waits for data (call d) fall on a
# tile's first k-step or inside the tile? ncu warp-stall samples per SASS instruction on Qwen3 fc2's
# and fc1's forward with the table's tiles, as call d; the peeled step's wait is its own instruction.
set -u -o pipefail
O=$OUT/g1_first_step_waits; mkdir -p $O
source benchmarks/device_env.sh
python3 benchmarks/results/h200_2026-12-03_session17/peel_first_step.py /tmp/pp/moejax/kernels/grouped_gemm/mosaic.py || exit 1
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
T="$R/benchmarks/results/h200_2026-12-03_session17/d1_ncu_source/top_stalls.py"
for o in fc2 fc1; do
  timeout 80 ncu --clock-control none -k "regex:body" -c 1 --section SourceCounters --section WarpStateStats \
    --page source --print-source sass --csv python3 $P --shape qwen3 --orient $o --op fwd --sweep tuned \
    --min-time 0.01 > $O/qwen3_${o}_sass.csv 2> $O/qwen3_${o}_err.txt
  gzip -f $O/qwen3_${o}_sass.csv
  python3 $T $O/qwen3_${o}_sass.csv.gz 30 | tee $O/qwen3_${o}_top.txt
done
