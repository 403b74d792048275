# session 5, call 1: new tree vs HEAD c2cb551 (.peers/base) step times, then a profile of the new tree
set -u
source benchmarks/device_env.sh
rm -rf /tmp/pb && mkdir -p /tmp/pb && cp -rL .peers/base/moejax .peers/base/configs .peers/base/train.py .peers/base/benchmarks /tmp/pb/
run() {  # dir tag proxy [overrides]
  local d=$1 tag=$2 p=$3; shift 3
  (cd $d && PYTHONPATH=$d:/tmp/site timeout 170 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 12 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1; tail -1 $OUT/$tag.log
}
run /tmp/pp new_qwen3 qwen3_30b_width
run /tmp/pb base_qwen3 qwen3_30b_width
run /tmp/pp new_mixtral mixtral_width
run /tmp/pb base_mixtral mixtral_width
TOP=150 OUT=$OUT/prof bash benchmarks/profile_proxies.sh
echo; cat $OUT/steps.jsonl | python3 -c "
import json,sys
for l in sys.stdin:
  r=json.loads(l); print(f\"{r['tag']:14} {r['step_ms']:7.1f} ms  {100*r['mfu']:5.1f}%  peak {r['peak_gib']:5.1f}  loss {r['loss']:.4f}\")"
