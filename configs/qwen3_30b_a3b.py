"""Qwen3-30B-A3B (30.5B parameters, 3.3B active): 48 layers, 128 experts top-8 (renormalised),
GQA 32/4 with head_dim 128 (≠ 2048/32) and per-head QK RMSNorm, no biases.

Architecture: Qwen/Qwen3-30B-A3B config.json and the Qwen3 report (arXiv 2505.09388).
Training values (not published): Megatron-MoE-ModelZoo's Qwen3 recipe (lr 1.2e-4 → 1.2e-5,
aux-loss 1e-3, seq 4096, global batch 512).
Layout: 16 H200 (2 nodes × 8): tp=2 with sequence parallelism, ep=16 (8 experts per GPU):
~1.8B expert + 0.8B other parameters per GPU ≈ 52 GB of model state.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=48, hidden_size=2048, ffn_hidden_size=6144, num_attention_heads=32,
                 num_query_groups=4, kv_channels=128, qk_layernorm=True, vocab_size=151936,
                 rotary_base=1e6, norm_epsilon=1e-6)
  c.moe.update(num_experts=128, router_topk=8, ffn_hidden_size=768,
               aux_loss_coeff=1e-3, token_dispatcher_type="alltoall")
  c.parallel.update(tp=2, sequence_parallel=True, ep=16, etp=1)
  c.data.update(source="synthetic")
  c.train.update(train_iters=50, micro_batch_size=1, global_batch_size=512, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=1.2e-4, min_lr=1.2e-5, lr_warmup_iters=10, weight_decay=0.1)
  return c
