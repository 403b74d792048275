# Warp-stall samples per SASS instruction from an ncu --page source --csv dump: python3 top_stalls.py FILE.csv.gz N
import csv, sys, gzip
lines=[l for l in gzip.open(sys.argv[1],'rt') if l.startswith('"')]
rows=list(csv.reader(lines))
i=next(j for j,r in enumerate(rows) if r and r[0]=="Address")
head=rows[i]; rows=rows[i+1:]
num=lambda v: float(v.replace(",","") or 0) if v not in ("-","") else 0.0
col=head.index("Warp Stall Sampling (All Samples)")
ni=head.index("Warp Stall Sampling (Not-issued Samples)")
st=[j for j,h in enumerate(head) if h.startswith("stall_") and "Not Issued" not in h]
total=sum(num(r[col]) for r in rows)
print("total samples",total, "instructions", len(rows))
# totals per stall reason
agg={head[j]:sum(num(r[j]) for r in rows) for j in st}
print(" ".join(f"{k[6:]}={100*v/total:.1f}%" for k,v in sorted(agg.items(), key=lambda kv:-kv[1]) if v>0))
for idx,r in sorted(enumerate(rows), key=lambda ir:-num(ir[1][col]))[:int(sys.argv[2])]:
  reasons=sorted(((num(r[j]),head[j][6:]) for j in st), reverse=True)[:2]
  print(f"{100*num(r[col])/total:5.1f}% #{idx:5d} {r[1].strip()[:60]:60s} exec={r[5]} " + " ".join(f"{n}:{int(v)}" for v,n in reasons if v))
