# session 5, call 2: H200 tiles for the Mixtral shapes; step times with them
set -u
R=$PWD
run() {  # tag proxy [overrides]
  local tag=$1 p=$2; shift 2
  (cd /tmp/pp && timeout 170 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 12 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1
}
source benchmarks/device_env.sh
run mixtral_h100tiles mixtral_width
TUNE_SHAPES="32768 8 4096 28672;32768 8 14336 4096" TUNE_TIMEOUT=100 OUT=$OUT/tune bash benchmarks/grouped_gemm_device.sh tune
cp $OUT/tune/tiles.json kernels/grouped_gemm/tiles.json
BENCH_TIMEOUT=150 OUT=$OUT/tune bash benchmarks/grouped_gemm_device.sh bench --shapes mixtral --skip-xla | tail -6
source benchmarks/device_env.sh
run mixtral_h200tiles mixtral_width
run qwen3 qwen3_30b_width
echo; python3 -c "
import json,sys
for l in open('$OUT/steps.jsonl'):
  r=json.loads(l); print(f\"{r['tag']:18} {r['step_ms']:7.1f} ms  {100*r['mfu']:5.1f}%  peak {r['peak_gib']:5.1f}  loss {r['loss']:.4f}\")"
