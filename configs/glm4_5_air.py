"""GLM-4.5-Air (106B parameters + one MTP layer, 12B active): 46 layers (the first dense),
grouped-query attention (96 query heads, 8 KV heads of 128, QKV biases, RoPE on half of each head:
model.rotary_percent=0.5), 1 shared + 128 routed experts top-8 of width 1408, sigmoid routing with
the aux-loss-free expert bias, no routed scaling, Multi-Token Prediction depth 1.

Source: zai-org/GLM-4.5-Air config.json (transformers' Glm4MoeForCausalLM; hf-to-moejax --family
glm4_moe reads it to the same keys) and the GLM-4.5 report (arXiv 2508.06471): Muon (5 Newton-Schulz steps,
momentum 0.95, update RMS 0.2), lr 2.5e-4 after warmup with cosine decay to 2.5e-5, weight decay 0.1,
MTP loss weight 0.3, sequences of 4096, batches ramped up to 64M tokens (the recipe
takes the final 16384 × 4096 from the start; `train.rampup_batch_size` with `train.train_samples` ramps it).
Layout: 64 H200 (8 nodes × 8): tp=4 with sequence parallelism, ep=64 (two experts per GPU):
~1.6B expert + 1.7B other parameters per GPU.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=46, hidden_size=4096, ffn_hidden_size=10944, num_attention_heads=96,
                 num_query_groups=8, kv_channels=128, vocab_size=151552, norm_epsilon=1e-5, rotary_base=1e6,
                 rotary_percent=0.5, add_qkv_bias=True, mtp_num_layers=1, mtp_loss_scaling_factor=0.3)
  c.moe.update(num_experts=128, router_topk=8, ffn_hidden_size=1408, shared_expert_intermediate_size=1408,
               layer_freq=[0] * 1 + [1] * 45, router_score_function="sigmoid", router_enable_expert_bias=True,
               router_norm_topk_prob=True, aux_loss_coeff=0.0, token_dispatcher_type="alltoall")
  c.parallel.update(tp=4, sequence_parallel=True, ep=64, etp=1)
  c.data.update(source="synthetic")
  c.train.update(train_iters=100_000, micro_batch_size=1, global_batch_size=16384, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  # Muon's spectral scale times 0.2: an update RMS of 0.2, AdamW's (Moonlight's rule)
  c.optim.update(optimizer="muon", muon_extra_scale_factor=0.2, lr=2.5e-4, min_lr=2.5e-5, lr_warmup_iters=2000,
                 weight_decay=0.1, clip_grad=1.0)
  return c
