"""Mixtral 8x22B (141B parameters, 39B active): 56 layers, all MoE, 8 experts top-2.

Architecture: mistralai/Mixtral-8x22B-v0.1 config.json (hidden 6144, FFN 16384, 48 heads, 8 KV
heads, vocab 32000, rope theta 1e6). Training values (not published): as configs/mixtral_8x7b.py.
Layout: 64 H200 (8 nodes × 8): tp=8 with sequence parallelism, ep=8 × etp=8 (each expert over
a node's 8 GPUs): ~2.1B expert + 0.7B other parameters per GPU ≈ 56 GB of model state.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=56, hidden_size=6144, ffn_hidden_size=16384, num_attention_heads=48,
                 num_query_groups=8, vocab_size=32000, rotary_base=1e6, norm_epsilon=1e-5)
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16384, aux_loss_coeff=1e-3,
               token_dispatcher_type="alltoall")
  c.parallel.update(tp=8, sequence_parallel=True, ep=8, etp=8)
  c.data.update(source="synthetic")
  c.train.update(train_iters=50, micro_batch_size=1, global_batch_size=128, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=1e-4, min_lr=1e-5, lr_warmup_iters=10, weight_decay=0.1)
  return c
