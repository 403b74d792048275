"""DeepSeek-V2 (236B parameters, 21B active): 60 layers (the first dense), MLA (q_lora_rank 1536,
kv_lora_rank 512, 128 + 64 rotary q/k head dims, v 128), 2 shared + 160 routed experts top-6,
softmax routing limited to the 3 best of 8 device groups (a group scored by its best expert),
routed scaling 16, YaRN as in the released config.

Source: DeepSeek-V2 report (arXiv 2405.04434) §3 and deepseek-ai/DeepSeek-V2 config.json:
init std 0.006, AdamW (0.9, 0.95), weight decay 0.1, lr 2.4e-4 after 2000 warmup steps, clip 1.0,
batch 2304 → 9216 × 4096 tokens, expert-level balance α1 = 0.003 (moejax has no device- and
communication-level balance losses).
Layout: 256 H200 (32 nodes × 8): tp=8 with sequence parallelism, ep=32 × etp=8 (5 experts per
expert-parallel rank, each over 8 GPUs): ~0.9B expert + 2.2B other parameters per GPU ≈ 62 GB.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=60, hidden_size=5120, ffn_hidden_size=12288, num_attention_heads=128,
                 num_query_groups=128, vocab_size=102400, norm_epsilon=1e-6, init_method_std=0.006,
                 multi_latent_attention=True, q_lora_rank=1536, kv_lora_rank=512, qk_head_dim=128,
                 qk_pos_emb_head_dim=64, v_head_dim=128, qk_layernorm=True, rotary_base=10000.0,
                 rope_type="yarn", rotary_scaling_factor=40.0, original_max_position_embeddings=4096,
                 mscale=0.707, mscale_all_dim=0.707)
  c.moe.update(num_experts=160, router_topk=6, ffn_hidden_size=1536, shared_expert_intermediate_size=3072,
               layer_freq=[0] + [1] * 59, router_pre_softmax=True, router_num_groups=8, router_group_topk=3,
               router_group_scoring="max", router_topk_scaling_factor=16.0,
               router_load_balancing_type="seq_aux_loss", aux_loss_coeff=3e-3, token_dispatcher_type="alltoall")
  c.parallel.update(tp=8, sequence_parallel=True, ep=32, etp=8)
  c.data.update(source="synthetic")
  c.train.update(train_iters=215_000, micro_batch_size=1, global_batch_size=2304, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=2.4e-4, min_lr=2.4e-5, lr_warmup_iters=2000, weight_decay=0.1, clip_grad=1.0)
  return c
