# session 5, call 6: does XLA's dynamic-slice fusion clone fc1 when its output is also a scan residual?
set -u
run() {  # tag
  local tag=$1; shift
  (cd /tmp/pp && timeout 100 python3 benchmarks/train_step.py --config configs/proxies/mixtral_width.py \
     --steps 8 --warmup 2 --tag $tag --out $OUT/steps.jsonl) > $OUT/$tag.log 2>&1
  grep -A1 "^tag" $OUT/$tag.log | tail -1; grep -iE "error|unknown" $OUT/$tag.log | head -2
}
source benchmarks/device_env.sh
XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=false MOEJAX_SWIGLU=vjp run vjp_nodsf
XLA_FLAGS=--xla_gpu_enable_dynamic_slice_fusion=false MOEJAX_SWIGLU=autodiff run autodiff_nodsf
MOEJAX_SWIGLU=autodiff run autodiff
