# session 6, call 4 (acceptance, same call as torchtitan): HEAD 76af1ad with the layers unrolled
# (--config.model.scan_unroll=0, the proxies' new setting) vs the new code (gradients materialized before
# AdamW), both proxies; torchtitan both; tiny bf16 loss before/after. At most 8 files come back.
set -u
source benchmarks/device_env.sh
rm -rf /tmp/pb && mkdir -p /tmp/pb && cp -rL .peers/base/moejax .peers/base/configs .peers/base/train.py .peers/base/benchmarks /tmp/pb/
L=$OUT/log.txt
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader | tee -a $L
run() {  # tree tag proxy overrides...
  local v=$1 tag=$2 p=$3; shift 3
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 110 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 15 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > /tmp/$tag.log 2>&1
  grep -A2 "^tag" /tmp/$tag.log | tail -2 | tee -a $L; grep -iE "error|unknown" /tmp/$tag.log | head -2 | tee -a $L
}
run pb qwen_before qwen3_30b_width --config.model.scan_unroll=0
run pp qwen_after qwen3_30b_width
run pb mix_before mixtral_width --config.model.scan_unroll=0
run pp mix_after mixtral_width
TITAN_BUDGET_S=330 TITAN_HARD_S=340 OUT=/tmp/titan bash .peers/torchtitan/run_titan.sh > /tmp/titan.log 2>&1
cp /tmp/titan/titan_results.txt $OUT/; grep -E "^==|median step" $OUT/titan_results.txt
tiny() {  # tree tag overrides...
  local v=$1 tag=$2; shift 2
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 90 python3 train.py --config configs/tiny_moe.py --workdir /tmp/w_$tag \
    --config.model.dtype=bfloat16 --config.train.train_iters=100 "$@" > /tmp/tiny_$tag.log 2>&1)
  cp /tmp/w_$tag/metrics.jsonl /tmp/tiny_$tag.jsonl
}
tiny pb base; tiny pp new; tiny pp new_unroll0 --config.model.scan_unroll=0
python3 - <<PY | tee -a $L
import json
for v in ("base", "new", "new_unroll0"):
  r = [json.loads(l) for l in open(f"/tmp/tiny_{v}.jsonl")]
  key = next(k for k in ("lm_loss", "loss") if k in r[-1])
  ls = [x[key] for x in r if key in x]
  print("tiny", v, key, "first", round(ls[0], 4), "last", round(ls[-1], 4), "mean of last 10", round(sum(ls[-10:]) / 10, 4))
PY
tar czf $OUT/logs.tgz -C /tmp $(cd /tmp && ls *.log tiny_*.jsonl titan/*.txt 2>/dev/null)
