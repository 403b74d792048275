# session 7, call 2: HEAD a60c294 (.peers/base) against the working tree (bf16 logits + per-layer
# gradients written into their stacks in place), both proxies, same call; profile of the new
# Mixtral step (top 80). The per-layer gradient code (moejax/train/schedule.py: the step
# differentiated per-layer slices of the stacked params and wrote each gradient into its stack with
# dynamic_update_slice) was not kept: RESULTS.md's change table.
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
TOP=80 PROXIES=mixtral_width OUT=/tmp/prof bash benchmarks/profile_proxies.sh 2>&1 | grep -v "^ " | tee -a $L
tar czf $OUT/prof.tgz -C /tmp prof
