# session 6, call 1: model.scan_unroll (0 = no layer loop) vs the default loop, same call as torchtitan
set -u
run() {  # tag proxy overrides...
  local tag=$1 p=$2; shift 2
  (cd /tmp/pp && timeout 110 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 15 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1; grep -iE "error|unknown" $OUT/$tag.log | head -2
}
source benchmarks/device_env.sh
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
run mix_u1 mixtral_width
run mix_u0 mixtral_width --config.model.scan_unroll=0
run qwen_u1 qwen3_30b_width
run qwen_u0 qwen3_30b_width --config.model.scan_unroll=0
run qwen_u2 qwen3_30b_width --config.model.scan_unroll=2
TITAN_BUDGET_S=200 TITAN_HARD_S=210 OUT=$OUT bash .peers/torchtitan/run_titan.sh > $OUT/titan.log 2>&1
cat $OUT/titan_results.txt
