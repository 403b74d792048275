"""Warp-stall samples per SASS instruction from an `ncu --page source --print-source sass --csv`
dump: the totals per stall reason, then the N instructions with the most samples.

  python3 top_stalls.py FILE.csv.gz N
"""
import csv
import gzip
import sys

rows = list(csv.reader(line for line in gzip.open(sys.argv[1], "rt") if line.startswith('"')))
start = next(j for j, r in enumerate(rows) if r and r[0] == "Address")
head, rows = rows[start], rows[start + 1:]
num = lambda v: 0.0 if v in ("-", "") else float(v.replace(",", ""))
col = head.index("Warp Stall Sampling (All Samples)")
executed = head.index("Instructions Executed")
reasons = [j for j, h in enumerate(head) if h.startswith("stall_") and "Not Issued" not in h]
total = sum(num(r[col]) for r in rows)
print("total samples", total, "instructions", len(rows))
per_reason = {head[j]: sum(num(r[j]) for r in rows) for j in reasons}
print(" ".join(f"{k[6:]}={100 * v / total:.1f}%"
               for k, v in sorted(per_reason.items(), key=lambda kv: -kv[1]) if v > 0))
for idx, r in sorted(enumerate(rows), key=lambda ir: -num(ir[1][col]))[:int(sys.argv[2])]:
  top = sorted(((num(r[j]), head[j][6:]) for j in reasons), reverse=True)[:2]
  print(f"{100 * num(r[col]) / total:5.1f}% #{idx:5d} {r[1].strip()[:60]:60s} exec={r[executed]} "
        + " ".join(f"{n}:{int(v)}" for v, n in top if v))
