"""Qwen3-30B-A3B width, 4 MoE layers: the one-GPU whole-step proxy (torchtitan peer A in
../shared/peers/torchtitan): hidden 2048, 128 experts top-8, expert FFN 768, 32 q / 4 kv heads
x 128, vocab 151936, seq 4096 x 4 = 16,384 tokens per step, bf16 compute over fp32 master
weights, AdamW, per-head QK-norm as in the real model (and torchtitan's proxy). Each layer has its
own params, run without a loop (model.scan_layers=False: faster on one GPU, benchmarks/RESULTS.md).

  python benchmarks/train_step.py --config configs/proxies/qwen3_30b_width.py
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=4, hidden_size=2048, ffn_hidden_size=6144, num_attention_heads=32,
                 num_query_groups=4, kv_channels=128, vocab_size=151936, rotary_base=1e6, norm_epsilon=1e-6,
                 qk_layernorm=True, dtype="bfloat16", params_dtype="float32",
                 scan_layers=False)
  c.moe.update(num_experts=128, router_topk=8, ffn_hidden_size=768, aux_loss_coeff=1e-3)
  c.data.update(source="synthetic")
  c.train.update(train_iters=30, micro_batch_size=4, global_batch_size=4, seq_length=4096, log_interval=1)
  c.optim.update(lr=3e-4, min_lr=3e-5, lr_warmup_iters=2, weight_decay=0.1)
  c.checkpoint.update(save_interval=1000)
  return c
