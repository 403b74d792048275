# session 7, call 3: HEAD a60c294 (.peers/base) against the working tree (bf16 logits + the compute
# copy carried in the train state, cast in the update's pass), both proxies, same call; profile of
# the new Qwen3 step (top 40).
set -u
source benchmarks/device_env.sh
L=$OUT/log.txt
mkdir -p /tmp/base && cp -rL .peers/base/moejax .peers/base/configs .peers/base/train.py .peers/base/benchmarks /tmp/base/
run() {  # tree tag proxy overrides...
  local v=$1 tag=$2 p=$3; shift 3
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 90 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 10 --warmup 2 --tag $tag --out $OUT/steps.jsonl "$@") > /tmp/$tag.log 2>&1
  grep -A2 "^tag" /tmp/$tag.log | tail -2 | tee -a $L; grep -iE "error|unknown" /tmp/$tag.log | head -2 | tee -a $L
}
run base qwen_base qwen3_30b_width
run pp qwen_new qwen3_30b_width
run base mixtral_base mixtral_width
run pp mixtral_new mixtral_width
TOP=40 PROXIES=qwen3_30b_width OUT=/tmp/prof bash benchmarks/profile_proxies.sh 2>&1 | grep -v "^ " | tee -a $L
tar czf $OUT/prof.tgz -C /tmp prof
