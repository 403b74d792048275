#!/bin/bash
# Device run: the tiny recipe in bf16 and a 1.1B-parameter MoE (4 layers, H 2048, 8 experts
# of F 5632, top-2, seq 2048) through train.py on one GPU; prints the last log lines of each.
#   bash benchmarks/train_smoke.sh
source "$(dirname "$0")/device_env.sh"
cd /tmp/pp
OUTDIR=${OUT:-/tmp/out}; mkdir -p "$OUTDIR"
python3 -c "import jax, flax, optax, orbax.checkpoint as o; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
timeout 150 python3 train.py --config configs/tiny_moe.py --workdir /tmp/w_tiny --config.model.dtype=bfloat16 \
  --config.train.train_iters=100 2>&1 | grep -E "^step|compiled|Error|error" | tail -8
timeout 240 python3 train.py --config configs/tiny_moe.py --workdir /tmp/w_1b --config.model.dtype=bfloat16 \
  --config.model.num_layers=4 --config.model.hidden_size=2048 --config.model.num_attention_heads=16 \
  --config.model.num_query_groups=4 --config.model.vocab_size=32000 --config.moe.ffn_hidden_size=5632 \
  --config.data.source=synthetic --config.train.seq_length=2048 --config.train.global_batch_size=8 \
  --config.train.micro_batch_size=8 --config.train.train_iters=30 --config.train.log_interval=5 \
  --config.checkpoint.save_interval=1000 2>&1 | grep -E "^step|compiled|Error|error" | tail -8
cp /tmp/w_tiny/metrics.jsonl "$OUTDIR/tiny_metrics.jsonl"; cp /tmp/w_1b/metrics.jsonl "$OUTDIR/moe1b_metrics.jsonl"
