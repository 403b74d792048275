# session 5, call 3: SwiGLU backward variants on the Mixtral proxy, a profile of the custom VJP, H200 tiles for Mixtral fc1
set -u
run() {  # tag proxy [overrides]
  local tag=$1 p=$2; shift 2
  (cd /tmp/pp && timeout 170 python3 benchmarks/train_step.py --config configs/proxies/$p.py \
     --steps 10 --warmup 3 --tag $tag --out $OUT/steps.jsonl "$@") > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1
}
source benchmarks/device_env.sh
for m in autodiff rf2 vjp; do MOEJAX_SWIGLU=$m run mix_$m mixtral_width; done
MOEJAX_SWIGLU=vjp PROXIES=mixtral_width TOP=150 OUT=$OUT/prof bash benchmarks/profile_proxies.sh | tail -3
TUNE_SHAPES="32768 8 4096 28672" TUNE_TIMEOUT=110 OUT=$OUT/tune bash benchmarks/grouped_gemm_device.sh tune
BENCH_TIMEOUT=120 OUT=$OUT/tune bash benchmarks/grouped_gemm_device.sh bench --shapes mixtral --skip-xla | tail -5
echo; python3 -c "
import json,sys
for l in open('$OUT/steps.jsonl'):
  r=json.loads(l); print(f\"{r['tag']:18} {r['step_ms']:7.1f} ms  {100*r['mfu']:5.1f}%  peak {r['peak_gib']:5.1f}  loss {r['loss']:.4f}\")"
