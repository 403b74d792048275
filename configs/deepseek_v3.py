"""DeepSeek-V3 (671B parameters + one 11.5B MTP layer, 37B active): 61 layers (the first 3
dense), MLA (q_lora_rank 1536, kv_lora_rank 512, 128 + 64 rotary q/k head dims, v 128), 1 shared +
256 routed experts top-8, sigmoid routing with the aux-loss-free expert bias, 4 of 8 node groups
(a group scored by its top-2 sum), routed scaling 2.5, Multi-Token Prediction depth 1, YaRN as in
the released config.

Source: DeepSeek-V3 report (arXiv 2412.19437) §4.2 and deepseek-ai/DeepSeek-V3 config.json:
init std 0.006, AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, bias update speed 0.001, sequence-wise
balance α = 0.0001, MTP loss weight 0.3 (first 10T tokens; 0.1 after), 14.8T tokens of 4096. Sample-based
as the report counts: the batch ramps from 3072 to 15360 sequences over the first 469B tokens (the report
gives no increment: 3072 here, so five sizes, each compiled once); lr 2.2e-4 after a 2000-step warmup
(2000 × 3072 samples), constant to 10T tokens, then a cosine over 4.3T tokens to 2.2e-5 (WSD with a cosine
annealing), kept to the end (the report's last 167B tokens at 7.3e-6 are not expressed).
Layout: 512 H200 (64 nodes × 8): tp=8 with sequence parallelism, ep=256 × etp=2 (one expert per
expert-parallel rank, over 2 GPUs): ~1.3B expert + 3.2B other parameters per GPU ≈ 90 GB.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=61, hidden_size=7168, ffn_hidden_size=18432, num_attention_heads=128,
                 num_query_groups=128, vocab_size=129280, norm_epsilon=1e-6, init_method_std=0.006,
                 multi_latent_attention=True, q_lora_rank=1536, kv_lora_rank=512, qk_head_dim=128,
                 qk_pos_emb_head_dim=64, v_head_dim=128, qk_layernorm=True, rotary_base=10000.0,
                 rope_type="yarn", rotary_scaling_factor=40.0, original_max_position_embeddings=4096,
                 mscale=1.0, mscale_all_dim=1.0, mtp_num_layers=1, mtp_loss_scaling_factor=0.3)
  c.moe.update(num_experts=256, router_topk=8, ffn_hidden_size=2048, shared_expert_intermediate_size=2048,
               layer_freq=[0] * 3 + [1] * 58, router_score_function="sigmoid", router_enable_expert_bias=True,
               router_bias_update_rate=1e-3, router_num_groups=8, router_group_topk=4,
               router_group_scoring="sum_top2", router_topk_scaling_factor=2.5,
               router_load_balancing_type="seq_aux_loss", aux_loss_coeff=1e-4, token_dispatcher_type="alltoall")
  c.parallel.update(tp=8, sequence_parallel=True, ep=256, etp=2)
  c.data.update(source="synthetic")
  tokens = lambda n: int(n) // 4096  # noqa: E731  samples of 4096 tokens
  c.train.update(train_iters=None, train_samples=tokens(14.8e12), micro_batch_size=1, global_batch_size=15360,
                 rampup_batch_size=(3072, 3072, tokens(469e9)), seq_length=4096, recompute_granularity="full",
                 log_interval=1)
  c.optim.update(lr=2.2e-4, min_lr=2.2e-5, lr_warmup_samples=2000 * 3072, lr_decay_style="WSD",
                 lr_decay_samples=tokens(14.3e12), lr_wsd_decay_style="cosine", lr_wsd_decay_samples=tokens(4.3e12),
                 weight_decay=0.1, clip_grad=1.0)
  return c
