"""GLM-4.5 (355B parameters + one MTP layer, 32B active): 92 layers (the first 3 dense),
grouped-query attention (96 query heads, 8 KV heads of 128, QKV biases, per-head QK-norm, RoPE on
half of each head: model.rotary_percent=0.5), 1 shared + 160 routed experts top-8 of width 1536,
sigmoid routing with the aux-loss-free expert bias, routed scaling 2.5, Multi-Token Prediction depth 1.

Source: zai-org/GLM-4.5 config.json (transformers' Glm4MoeForCausalLM; hf-to-moejax --family glm4_moe
reads it to the same keys) and the GLM-4.5 report (arXiv 2508.06471): Muon (5 Newton-Schulz steps,
momentum 0.95, update RMS 0.2), lr 2.5e-4 after warmup with cosine decay to 2.5e-5, weight decay 0.1,
MTP loss weight 0.3, sequences of 4096, batches ramped up to 64M tokens (moejax has no batch ramp-up:
the recipe takes the final 16384 × 4096).
Layout: 256 H200 (32 nodes × 8): tp=8 with sequence parallelism, ep=32 × etp=8 (five experts per
expert-parallel rank, over 8 GPUs): ~1.3B expert + 1.8B other parameters per GPU.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=92, hidden_size=5120, ffn_hidden_size=12288, num_attention_heads=96,
                 num_query_groups=8, kv_channels=128, vocab_size=151552, norm_epsilon=1e-5, rotary_base=1e6,
                 rotary_percent=0.5, add_qkv_bias=True, qk_layernorm=True, mtp_num_layers=1,
                 mtp_loss_scaling_factor=0.3)
  c.moe.update(num_experts=160, router_topk=8, ffn_hidden_size=1536, shared_expert_intermediate_size=1536,
               layer_freq=[0] * 3 + [1] * 89, router_score_function="sigmoid", router_enable_expert_bias=True,
               router_norm_topk_prob=True, router_topk_scaling_factor=2.5, aux_loss_coeff=0.0,
               token_dispatcher_type="alltoall")
  c.parallel.update(tp=8, sequence_parallel=True, ep=32, etp=8)
  c.data.update(source="synthetic")
  c.train.update(train_iters=100_000, micro_batch_size=1, global_batch_size=16384, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  # Muon's spectral scale times 0.2: an update RMS of 0.2, AdamW's (Moonlight's rule)
  c.optim.update(optimizer="muon", muon_extra_scale_factor=0.2, lr=2.5e-4, min_lr=2.5e-5, lr_warmup_iters=2000,
                 weight_decay=0.1, clip_grad=1.0)
  return c
