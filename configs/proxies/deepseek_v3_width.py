"""DeepSeek-V3 width on one GPU: the whole-step proxy of a DeepSeek-V3 pipeline stage at EP32.
Hidden 7168, MLA as in the real model (128 heads, q_lora_rank 1536, kv_lora_rank 512, q/k heads
128 + 64 rotary, v 128, latent norms), 1 dense layer (FFN 18432) then 2 MoE layers of 8 local
experts (256 experts over EP32 leave 8 per GPU; top-8 over them gives the per-GPU expert work of
top-8 of 256 at EP32) with FFN 2048 and one shared expert of 2048, sigmoid routing with the
aux-loss-free expert bias and routed scaling 2.5, vocab 129280, seq 4096 x 1, bf16 compute over
fp32 master weights, AdamW. No torchtitan peer at this width (its proxies are Qwen3 and Mixtral).

  python benchmarks/train_step.py --config configs/proxies/deepseek_v3_width.py
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=3, hidden_size=7168, ffn_hidden_size=18432, num_attention_heads=128,
                 num_query_groups=128, vocab_size=129280, norm_epsilon=1e-6, init_method_std=0.006,
                 multi_latent_attention=True, q_lora_rank=1536, kv_lora_rank=512, qk_head_dim=128,
                 qk_pos_emb_head_dim=64, v_head_dim=128, qk_layernorm=True, dtype="bfloat16",
                 params_dtype="float32")
  c.moe.update(num_experts=8, router_topk=8, ffn_hidden_size=2048, shared_expert_intermediate_size=2048,
               layer_freq=[0, 1, 1], router_score_function="sigmoid", router_enable_expert_bias=True,
               router_bias_update_rate=1e-3, router_topk_scaling_factor=2.5,
               router_load_balancing_type="seq_aux_loss", aux_loss_coeff=1e-4)
  c.data.update(source="synthetic")
  c.train.update(train_iters=30, micro_batch_size=1, global_batch_size=1, seq_length=4096, log_interval=1)
  c.optim.update(lr=2.2e-4, min_lr=2.2e-5, lr_warmup_iters=2, weight_decay=0.1)
  c.checkpoint.update(save_interval=1000)
  return c
