"""Mixtral 8x7B (46.7B params, 12.9B active): 32 layers, all MoE, 8 experts top-2."""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                 num_query_groups=8, vocab_size=32000, rotary_base=1e6, norm_epsilon=1e-5,
                 dtype="bfloat16", params_dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=14336, aux_loss_coeff=1e-2,
               router_load_balancing_type="aux_loss")
  c.parallel.update(ep=8)
  c.data.update(source="synthetic")
  c.train.update(train_iters=50, micro_batch_size=1, global_batch_size=64, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=1e-4, min_lr=1e-5, lr_warmup_iters=10, weight_decay=0.1)
  c.checkpoint.update(save_interval=1000)
  return c
