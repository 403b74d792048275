"""Tiny MoE that trains on a CPU in a few minutes, on Python's bundled docs (bytes)."""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=4, hidden_size=128, ffn_hidden_size=256, num_attention_heads=4,
                 num_query_groups=2, vocab_size=257, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=128, aux_loss_coeff=1e-2, z_loss_coeff=1e-3)
  c.train.update(train_iters=200, micro_batch_size=2, global_batch_size=16, seq_length=128, log_interval=25)
  c.optim.update(lr=3e-3, min_lr=3e-4, lr_warmup_iters=20, weight_decay=0.01)
  c.checkpoint.update(save_interval=50)
  return c
