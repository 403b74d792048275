# session 7, call 1: bf16 logits from the LM-head GEMM (variant tree .peers/v1, upcast to fp32 in
# the loss as Megatron does) against the current code, both proxies, same call; then profiles of
# the current code (top 300 kernels) for both proxies. .peers/v1 was a60c294 with _chunk_logits'
# einsum writing bf16 (`jnp.einsum("bch,hv->bcv", x_BCH, w_HV).astype(jnp.float32)`), the form
# moejax/layers/cross_entropy.py's head_logits has now.
set -u
source benchmarks/device_env.sh
L=$OUT/log.txt
mkdir -p /tmp/v1 && cp -rL .peers/v1/moejax .peers/v1/configs .peers/v1/train.py .peers/v1/benchmarks /tmp/v1/
run() {  # tree tag proxy overrides...
  local v=$1 tag=$2 p=$3; shift 3
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 90 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 10 --warmup 2 --tag $tag --out $OUT/steps.jsonl "$@") > /tmp/$tag.log 2>&1
  grep -A2 "^tag" /tmp/$tag.log | tail -2 | tee -a $L; grep -iE "error|unknown" /tmp/$tag.log | head -2 | tee -a $L
}
run pp qwen_head qwen3_30b_width
run v1 qwen_bf16logits qwen3_30b_width
run pp mixtral_head mixtral_width
run v1 mixtral_bf16logits mixtral_width
TOP=300 OUT=/tmp/prof bash benchmarks/profile_proxies.sh 2>&1 | grep -v "^ " | tee -a $L
tar czf $OUT/prof.tgz -C /tmp prof
