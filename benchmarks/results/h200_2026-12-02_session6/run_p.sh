# session 6, call 5: Qwen3 step with the H200-tuned Qwen3 tiles vs the H100 ones (same code otherwise);
# a profile of the new Qwen3 step (layers unrolled, gradients materialized before AdamW), top 150.
set -u
source benchmarks/device_env.sh
L=$OUT/log.txt
rm -rf /tmp/pq && cp -r /tmp/pp /tmp/pq && cp .peers/old_tiles/tiles.json /tmp/pq/moejax/kernels/grouped_gemm/tiles.json
run() {  # tree tag proxy overrides...
  local v=$1 tag=$2 p=$3; shift 3
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 60 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 10 --warmup 2 --tag $tag --out $OUT/steps.jsonl "$@") > /tmp/$tag.log 2>&1
  grep -A2 "^tag" /tmp/$tag.log | tail -2 | tee -a $L; grep -iE "error|unknown" /tmp/$tag.log | head -2 | tee -a $L
}
run pp qwen_h200_tiles qwen3_30b_width
run pq qwen_h100_tiles qwen3_30b_width
TOP=150 PROXIES=qwen3_30b_width OUT=/tmp/prof bash benchmarks/profile_proxies.sh 2>&1 | grep -v "^ " | tee -a $L
tar czf $OUT/prof.tgz -C /tmp prof
