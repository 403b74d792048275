#!/bin/bash
# Session 32, one GPU call: the Mixtral-width whole-step proxy (benchmarks/train_step.py, bf16,
# one GPU) at the tree before this session's changes (3c24885: XLA's own partitioned embedding
# lookup and unfused cross-entropy) and at this tree (the vocab-parallel lookup as shard_maps with
# its own gradient, weighted_swiglu's probs gradient summed over etp), same call; on one GPU the
# new code paths run with size-1 mesh axes, so this checks they compile on the device's JAX and
# cost nothing.
#   mkdir -p .peers/s32_old && git archive 3c24885 moejax kernels configs train.py benchmarks | tar -x -C .peers/s32_old
#   carry [".whl", ".peers/s32_old"]; bash benchmarks/results/gpu_2026-12-06_session32/run.sh
set -u
source benchmarks/device_env.sh
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
rm -rf /tmp/old && mkdir -p /tmp/old && cp -rL "$R/.peers/s32_old"/{moejax,configs,train.py,benchmarks} /tmp/old/
python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
for tree in old pp; do
  (cd /tmp/$tree && PYTHONPATH=/tmp/$tree:/tmp/site timeout 110 python3 benchmarks/train_step.py \
    --config configs/proxies/mixtral_width.py --steps 10 --warmup 3 --tag "mixtral-$tree" --out "$OUTDIR/steps.jsonl") \
    2>&1 | grep -vE '^WARNING|bfc_allocator' | tail -3
done
python3 - "$OUTDIR/steps.jsonl" <<'PY'
import json, sys
rows = {r["tag"]: r for r in map(json.loads, open(sys.argv[1]))}
for tag, r in rows.items():
  print(f"{tag:14} {r['step_ms']:8.1f} ms  {r['tokens_per_s']:8.0f} tok/s  peak {r['peak_gib']:5.1f} GiB  loss {r['loss']:.4f}"
        f"  ({r['device']}, JAX {r['jax']})")
if len(rows) == 2:
  print(f"new/old step time {rows['mixtral-pp']['step_ms'] / rows['mixtral-old']['step_ms']:.3f}")
PY
