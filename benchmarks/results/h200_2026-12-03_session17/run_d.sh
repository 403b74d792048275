#!/bin/bash
# Ran on commit 613d099 (as calls a-c).
# Session 17, call d (d1_ncu_source/): where the table's kernels stall. Call c showed 40% (table's tile)
# and 49% (256-row tile) of the cycles between a warp's instructions are L1TEX-scoreboard stalls on
# Qwen3 fc2's forward. ncu with warp-stall sampling per SASS instruction (--page source, csv) on Qwen3
# fc2's and fc1's forward with the table's tiles (Dirichlet(1) groups); the 40 instructions with the
# most stall samples of each, with their SASS and stall reasons.
set -u -o pipefail
O=$OUT/d1_ncu_source; mkdir -p $O
source benchmarks/device_env.sh
cd /tmp
P=/tmp/pp/benchmarks/grouped_gemm_profile.py
for o in fc2 fc1; do
  timeout 150 ncu --clock-control none -k "regex:body" -c 1 --section SourceCounters --section WarpStateStats \
    --page source --print-source sass --csv python3 $P --shape qwen3 --orient $o --op fwd --sweep tuned \
    --min-time 0.01 > $O/qwen3_${o}_sass.csv 2> $O/qwen3_${o}_err.txt
  python3 - $O/qwen3_${o}_sass.csv <<'PY' | tee $O/qwen3_${o}_top.txt
import csv, sys
rows = list(csv.reader(l for l in open(sys.argv[1]) if l.startswith('"')))
head = rows[0]; rows = rows[1:]
print(len(rows), "rows;", head)
col = next(i for i, h in enumerate(head) if "Warp Stall Sampling (All" in h)
num = lambda v: float(v.replace(",", "") or 0)
total = sum(num(r[col]) for r in rows)
src = head.index("Source") if "Source" in head else 1
for r in sorted(rows, key=lambda r: -num(r[col]))[:40]:
  print(f"{100 * num(r[col]) / total:5.1f}%", r[0], r[src])
PY
  gzip -f $O/qwen3_${o}_sass.csv
done
