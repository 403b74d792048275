# session 5, call 4: H200 tiles for Mixtral fc1 + the Mixtral grouped GEMM bench; tiny bf16 loss before/after
set -u
BENCH_TIMEOUT=120 OUT=$OUT/before bash benchmarks/grouped_gemm_device.sh bench --shapes mixtral --skip-xla | tail -4
TUNE_SHAPES="32768 8 4096 28672" TUNE_TIMEOUT=110 BENCH_TIMEOUT=120 OUT=$OUT/tune bash benchmarks/grouped_gemm_device.sh tune+bench --shapes mixtral --skip-xla | tail -4
source benchmarks/device_env.sh
rm -rf /tmp/pb && mkdir -p /tmp/pb && cp -rL .peers/base/moejax .peers/base/configs .peers/base/train.py /tmp/pb/
for v in pp pb; do
  (cd /tmp/$v && PYTHONPATH=/tmp/$v:/tmp/site timeout 100 python3 train.py --config configs/tiny_moe.py --workdir /tmp/w_$v \
    --config.model.dtype=bfloat16 --config.train.train_iters=100 > $OUT/tiny_$v.log 2>&1)
  cp /tmp/w_$v/metrics.jsonl $OUT/tiny_$v.jsonl
done
python3 - <<PY
import json
rows = {v: [json.loads(l) for l in open(f"$OUT/tiny_{v}.jsonl")] for v in ("pp", "pb")}
key = next(k for k in ("lm_loss", "loss") if k in rows["pp"][-1])
for v, r in rows.items():
  ls = [x[key] for x in r if key in x]
  print(v, key, "first", round(ls[0], 4), "last", round(ls[-1], 4), "mean of last 10", round(sum(ls[-10:]) / 10, 4))
PY
