#!/bin/bash
# One GPU, one device call: issue 18's acceptance measurement. moejax's whole-step proxies
# (configs/proxies/, benchmarks/train_step.py) and torchtitan's at the same widths, then a table of
# step times, the tokens/s ratio and our MFU. With BASE=DIR (another tree, carried; or several,
# space-separated) the proxies also run from each such tree first (tagged with the directory's name),
# and the tiny recipe's bf16 loss in each and in this tree: before/after in the same call.
#   mkdir -p .peers && cp -r ../shared/peers/torchtitan .peers/      # carry [".whl", ".peers"]
#   mkdir -p .peers/base && git archive REV moejax kernels configs train.py benchmarks | tar -x -C .peers/base
#   BASE=.peers/base bash benchmarks/proxies_vs_titan.sh               # REV before this tree, same call
#   bash benchmarks/proxies_vs_titan.sh [extra train_step.py flags, e.g. --config.model.scan_unroll=1]
#   TINY=0 TITAN=none BASE=".peers/v1 .peers/v2" bash benchmarks/proxies_vs_titan.sh  # A/B/C, step times only
# $OUT gets log.txt, ours.jsonl, titan_results.{txt,json} and logs.tgz (a device call returns at
# most 8 files). On an H200 it ran in 134-184 s, and 313-338 s with BASE (session 7: run_t.sh ... run_v.sh
# in benchmarks/results/h200_2026-12-02_session7/), plus the machine's start.
set -u
source "$(dirname "$0")/device_env.sh"
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR" /tmp/pvt_logs; LOG="$OUTDIR/log.txt"
PROXIES=${PROXIES:-qwen3_30b_width mixtral_width}
TITAN=${TITAN:-$R/.peers/torchtitan/run_titan.sh}
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$LOG"

proxy() {  # TREE TAG PROXY [flags]: median of 15 timed steps after 3 warm-up steps
  local tree=$1 tag=$2 p=$3; shift 3
  (cd "$tree" && PYTHONPATH="$tree:/tmp/site" timeout 150 python3 benchmarks/train_step.py \
    --config "configs/proxies/$p.py" --steps 15 --warmup 3 --tag "$tag" --out "$OUTDIR/ours.jsonl" "$@") \
    > "/tmp/pvt_logs/$tag.log" 2>&1 || echo "$tag failed: /tmp/pvt_logs/$tag.log" | tee -a "$LOG"
}
TREES=""
for b in ${BASE:-}; do  # /tmp/pvt_NAME: a copy of each BASE tree, NAME its directory's name
  n=$(basename "$b"); TREES="$TREES pvt_$n"
  rm -rf "/tmp/pvt_$n" && mkdir -p "/tmp/pvt_$n" && cp -rL "$b"/{moejax,configs,train.py,benchmarks} "/tmp/pvt_$n/"
  for p in $PROXIES; do proxy "/tmp/pvt_$n" "$p-$n" "$p" "$@"; done
done
for p in $PROXIES; do proxy /tmp/pp "$p" "$p" "$@"; done
if [ "$TITAN" != none ]; then
  TITAN_BUDGET_S=${TITAN_BUDGET_S:-330} TITAN_HARD_S=${TITAN_HARD_S:-340} OUT=/tmp/pvt_titan bash "$TITAN" \
    > /tmp/pvt_logs/titan.log 2>&1
  cp /tmp/pvt_titan/titan_results.txt /tmp/pvt_titan/titan_results.json "$OUTDIR/" 2>/dev/null
fi
if [ -n "$TREES" ] && [ "${TINY:-1}" != 0 ]; then  # TINY=0 skips it. Numbers unchanged: the tiny recipe in bf16, 100 steps through train.py, every tree
  for v in $TREES pp; do
    rm -rf "/tmp/w_$v"
    (cd "/tmp/$v" && PYTHONPATH="/tmp/$v:/tmp/site" timeout 120 python3 train.py --config configs/tiny_moe.py \
      --workdir "/tmp/w_$v" --config.model.dtype=bfloat16 --config.train.train_iters=100) > "/tmp/pvt_logs/tiny_$v.log" 2>&1
    python3 -c "import json, sys; r = [json.loads(l)['lm_loss'] for l in open(sys.argv[1])]
print(f'tiny bf16 lm_loss, {sys.argv[2]}: first {r[0]:.4f} last {r[-1]:.4f} mean of the last 10 {sum(r[-10:]) / 10:.4f}')" \
      "/tmp/w_$v/metrics.jsonl" "$([ $v = pp ] && echo this tree || echo "BASE ${v#pvt_}")" | tee -a "$LOG"
  done
fi
python3 - "$OUTDIR" <<'EOF' | tee -a "$LOG"
import json, os, sys
out = sys.argv[1]
ours = [json.loads(l) for l in open(os.path.join(out, "ours.jsonl"))] if os.path.exists(os.path.join(out, "ours.jsonl")) else []
try:
  titan = json.load(open(os.path.join(out, "titan_results.json")))
except (OSError, ValueError):
  titan = {}
peer = {"qwen3_30b_width": "A", "mixtral_width": "B"}  # torchtitan's proxy names (../shared/peers/torchtitan)
print(f"{'run':<24} {'step ms':>8} {'titan ms':>9} {'ratio':>6} {'MFU':>6} {'TFLOP/s':>8} {'peak GiB':>8}")
for r in ours:
  proxy = r["tag"].split("-")[0]
  t = titan.get(peer.get(proxy, ""), {}).get("median_step_time_s")
  ratio = f"{t * 1e3 / r['step_ms']:.2f}x" if t else "n/a"
  tms = f"{t * 1e3:.1f}" if t else "n/a"
  print(f"{r['tag']:<24} {r['step_ms']:8.1f} {tms:>9} {ratio:>6} {r['mfu']:6.1%} {r['tflops_per_device']:8.1f} "
        f"{r['peak_gib']:8.1f}")
print(f"({ours[0]['device'] if ours else '?'}, JAX {ours[0]['jax'] if ours else '?'}; ratio = torchtitan step time / ours,"
      " i.e. our tokens/s over theirs; MFU by REFERENCE.md section 3's count against 989 TFLOP/s)")
EOF
tar czf "$OUTDIR/logs.tgz" -C /tmp pvt_logs
