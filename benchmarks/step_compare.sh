#!/bin/bash
# One GPU, one device call:
#  (1) the code before the house refactor (OLD, default .bench_old = `git archive bc21d56`, carried)
#      against this tree: the 1.1B MoE train smoke through train.py (train_smoke.sh's second run) and
#      the MoE layer forward+backward at Mixtral and Qwen3 widths (benchmarks/moe_layer.py, 16,384
#      tokens, one GPU);
#  (2) this tree's whole-step proxies (configs/proxies/) with the fused LM-head cross-entropy off and
#      on, the fused one profiled and broken down by benchmarks/profile_breakdown.py.
# Writes $OUT/log.txt and JSON lines; prints the tables last.
#   mkdir -p .bench_old && git archive bc21d56 | tar -x -C .bench_old    # carry [".whl", ".bench_old"]
#   bash benchmarks/step_compare.sh
set -u
source "$(dirname "$0")/device_env.sh"
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"; LOG="$OUTDIR/log.txt"
OLD=${OLD:-$R/.bench_old}
rm -rf /tmp/old && mkdir -p /tmp/old && cp -r "$OLD"/moejax "$OLD"/configs "$OLD"/train.py "$OLD"/benchmarks /tmp/old/ \
  && cp -r "$OLD"/kernels /tmp/old/moejax/kernels
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())" | tee -a "$LOG"

smoke() {  # TREE TAG: 1.1B MoE (4 layers, H 2048, 8 experts of F 5632, top-2, seq 2048 x 8), 20 steps
  rm -rf "/tmp/w_$2"
  (cd "$1" && PYTHONPATH="$1:/tmp/site" timeout 120 python3 train.py --config configs/tiny_moe.py --workdir "/tmp/w_$2" \
    --config.model.dtype=bfloat16 --config.model.num_layers=4 --config.model.hidden_size=2048 \
    --config.model.num_attention_heads=16 --config.model.num_query_groups=4 --config.model.vocab_size=32000 \
    --config.moe.ffn_hidden_size=5632 --config.data.source=synthetic --config.train.seq_length=2048 \
    --config.train.global_batch_size=8 --config.train.micro_batch_size=8 --config.train.train_iters=20 \
    --config.train.log_interval=10 --config.checkpoint.save_interval=1000 --config.logging.tensorboard=False) 2>&1 \
    | grep -E "^step|compiled|Error" | tail -3 | tee -a "$LOG"
  python3 - "$2" <<'EOF' | tee -a "$OUTDIR/compare.txt"
import json, statistics, sys
rows = [json.loads(line) for line in open(f"/tmp/w_{sys.argv[1]}/metrics.jsonl")][5:]
print(f"smoke {sys.argv[1]:10} step {1e3 * statistics.median(r['step_time'] for r in rows):8.2f} ms "
      f"(median of steps 6-20)  tflops {statistics.median(r['tflops_per_device'] for r in rows):6.1f}")
EOF
}
layer() {  # TREE TAG
  (cd "$1" && PYTHONPATH="$1:/tmp/site" timeout 150 python3 benchmarks/moe_layer.py --out "$OUTDIR" --tag "layer_$2" \
    --models mixtral,qwen3 --eps 1 --variants allgather --no-exchange --no-check --iters 5 --tokens 16384 \
    --deadline 120) 2>&1 | grep -E "^(mixtral|qwen3) |ERROR" | sed "s/^/$2 /" | tee -a "$OUTDIR/compare.txt"
}
smoke /tmp/old before
smoke /tmp/pp after
layer /tmp/old before
layer /tmp/pp after

proxy() {  # RECIPE TAG EXTRA...
  local recipe=$1 tag=$2; shift 2
  (cd /tmp/pp && timeout 110 python3 benchmarks/train_step.py --config "configs/proxies/$recipe.py" --steps 10 \
    --warmup 3 --tag "$tag" --out "$OUTDIR/steps.jsonl" "$@") 2>&1 | tail -4 | tee -a "$LOG"
}
proxy qwen3_30b_width qwen3-unfused --config.model.cross_entropy_loss_fusion=False
proxy qwen3_30b_width qwen3-fused --profile /tmp/prof_qwen3
proxy mixtral_width mixtral-unfused --config.model.cross_entropy_loss_fusion=False
proxy mixtral_width mixtral-fused --profile /tmp/prof_mixtral
for p in qwen3 mixtral; do
  echo "== breakdown: $p fused (ms/step)" | tee -a "$LOG"
  (cd /tmp/pp && python3 benchmarks/profile_breakdown.py "/tmp/prof_$p") 2>&1 | tee -a "$LOG"
done
echo "== before/after the house refactor (same call)"; cat "$OUTDIR/compare.txt"
echo "== proxies"; python3 - "$OUTDIR/steps.jsonl" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  print(f"{r['tag']:16} {r['step_ms']:7.1f} ms {r['tokens_per_s']:8.0f} tok/s {r['tflops_per_device']:6.1f} TFLOP/s "
        f"MFU {100 * r['mfu']:5.1f}% (vs matmul {100 * r['mfu_vs_matmul']:5.1f}%) peak {r['peak_gib']:6.1f} GiB "
        f"compile {r['compile_s']:5.1f}s")
EOF
