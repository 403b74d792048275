# session 6, call 2: profiles with the layers unrolled (proxies now set model.scan_unroll=0), Qwen3 with the
# vocabulary padded to 256/1024 (cuBLAS tiles for the LM head), torchtitan both, DeepSeek-V3 width unroll 1 vs 0
set -u
run() {  # tag proxy overrides...
  local tag=$1 p=$2; shift 2
  (cd /tmp/pp && timeout 110 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 15 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1; grep -iE "error|unknown" $OUT/$tag.log | head -2
}
TOP=150 OUT=$OUT/prof bash benchmarks/profile_proxies.sh
run qwen_v128 qwen3_30b_width
run qwen_v256 qwen3_30b_width --config.model.make_vocab_size_divisible_by=256
run qwen_v1024 qwen3_30b_width --config.model.make_vocab_size_divisible_by=1024
TITAN_BUDGET_S=330 TITAN_HARD_S=340 OUT=$OUT bash .peers/torchtitan/run_titan.sh > $OUT/titan.log 2>&1
grep -E "^==|median step" $OUT/titan_results.txt
run ds_u0 deepseek_v3_width --config.model.scan_unroll=0
run ds_u1 deepseek_v3_width
