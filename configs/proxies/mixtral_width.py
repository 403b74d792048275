"""Mixtral-8x7B width, 2 MoE layers: the one-GPU whole-step proxy (torchtitan peer B in
../shared/peers/torchtitan): hidden 4096, 8 experts top-2, expert FFN 14336, 32/8 heads x 128,
vocab 32000, seq 4096 x 4 = 16,384 tokens per step, bf16 compute over fp32 master weights, AdamW.
Each layer has its own params, run without a loop (model.scan_layers=False: faster on one GPU,
benchmarks/RESULTS.md).

  python benchmarks/train_step.py --config configs/proxies/mixtral_width.py
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=2, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                 num_query_groups=8, vocab_size=32000, rotary_base=1e6, dtype="bfloat16", params_dtype="float32",
                 scan_layers=False)
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=14336, aux_loss_coeff=1e-2)
  c.data.update(source="synthetic")
  c.train.update(train_iters=30, micro_batch_size=4, global_batch_size=4, seq_length=4096, log_interval=1)
  c.optim.update(lr=3e-4, min_lr=3e-5, lr_warmup_iters=2, weight_decay=0.1)
  c.checkpoint.update(save_interval=1000)
  return c
