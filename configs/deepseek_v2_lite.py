"""DeepSeek-V2-Lite (15.7B parameters, 2.4B active): 27 layers (the first dense), MLA without a
q low-rank (kv_lora_rank 512, 128 + 64 rotary q/k head dims, v 128), 2 shared + 64 routed
experts top-6, softmax routing without renormalisation, YaRN as in the released config.

Source: DeepSeek-V2 report (arXiv 2405.04434) appendix B and deepseek-ai/DeepSeek-V2-Lite
config.json: init std 0.006, AdamW (0.9, 0.95), weight decay 0.1, lr 4.2e-4 after 2000 warmup
steps, clip 1.0, batch 4608 × 4096 tokens, expert-level balance α1 = 0.001 (per sequence).
Layout: 8 H200 (1 node): ep=8 (8 experts per GPU), no tp: ~1.8B expert + 1.3B other parameters
per GPU ≈ 62 GB of model state.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=27, hidden_size=2048, ffn_hidden_size=10944, num_attention_heads=16,
                 num_query_groups=16, vocab_size=102400, norm_epsilon=1e-6, init_method_std=0.006,
                 multi_latent_attention=True, q_lora_rank=None, kv_lora_rank=512, qk_head_dim=128,
                 qk_pos_emb_head_dim=64, v_head_dim=128, qk_layernorm=True, rotary_base=10000.0,
                 rope_type="yarn", rotary_scaling_factor=40.0, original_max_position_embeddings=4096,
                 mscale=0.707, mscale_all_dim=0.707)
  c.moe.update(num_experts=64, router_topk=6, ffn_hidden_size=1408, shared_expert_intermediate_size=2816,
               layer_freq=[0] + [1] * 26, router_pre_softmax=True, router_load_balancing_type="seq_aux_loss",
               aux_loss_coeff=1e-3, token_dispatcher_type="alltoall")
  c.parallel.update(ep=8)
  c.data.update(source="synthetic")
  c.train.update(train_iters=302_000, micro_batch_size=1, global_batch_size=4608, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=4.2e-4, min_lr=4.2e-5, lr_warmup_iters=2000, weight_decay=0.1, clip_grad=1.0)
  return c
