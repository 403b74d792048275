# session 6, call 3: Qwen3 profile with the layers unrolled (kept: top 150), Qwen3 vocabulary padded to 256/1024,
# grouped GEMM tuned on the H200 for Qwen3's fc1/fc2 and benchmarked. Few files: $OUT takes at most 8.
set -u
source benchmarks/device_env.sh
L=$OUT/log.txt
run() {  # tag proxy overrides...
  local tag=$1 p=$2; shift 2
  (cd /tmp/pp && timeout 100 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 10 --warmup 2 --tag $tag --out $OUT/steps.jsonl "$@") > /tmp/$tag.log 2>&1
  grep -A1 "^tag" /tmp/$tag.log | tail -1 | tee -a $L; grep -iE "error|unknown" /tmp/$tag.log | head -2
}
TOP=150 PROXIES=qwen3_30b_width OUT=/tmp/prof bash benchmarks/profile_proxies.sh 2>&1 | tail -3
tar czf $OUT/prof.tgz -C /tmp prof
run qwen_v256 qwen3_30b_width --config.model.make_vocab_size_divisible_by=256
run qwen_v1024 qwen3_30b_width --config.model.make_vocab_size_divisible_by=1024
TUNE_SHAPES="65536 128 768 2048;65536 128 2048 1536" TUNE_TIMEOUT=110 OUT=/tmp/tune \
  bash benchmarks/grouped_gemm_device.sh tune+bench --shapes qwen3 --skip-xla 2>&1 | tail -30 | tee -a $L
tar czf $OUT/tune.tgz -C /tmp tune
