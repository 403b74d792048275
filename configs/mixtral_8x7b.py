"""Mixtral 8x7B (46.7B parameters, 12.9B active): 32 layers, all MoE, 8 experts top-2.

Architecture: mistralai/Mixtral-8x7B-v0.1 config.json (and arXiv 2401.04088). Training values
(not published by Mistral): Megatron-LM's Mixtral example (examples/mixtral: lr 1e-4 → 1e-5,
aux-loss 1e-2, seq 4096, full recompute).
Layout: 16 H200 (2 nodes × 8): tp=2 with sequence parallelism, ep=8 × etp=2 over all 16
(1 expert sharded over 2 GPUs): ~2.8B expert + 0.8B other parameters per GPU, fp32 master
+ grads + Adam ≈ 72 GB of 141 (tests/configs/test_zoo_recipes.py).
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=32, hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32,
                 num_query_groups=8, vocab_size=32000, rotary_base=1e6, norm_epsilon=1e-5,
                 dtype="bfloat16", params_dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=14336, aux_loss_coeff=1e-2,
               router_load_balancing_type="aux_loss", token_dispatcher_type="alltoall")
  c.parallel.update(tp=2, sequence_parallel=True, ep=8, etp=2)
  c.data.update(source="synthetic")
  c.train.update(train_iters=50, micro_batch_size=1, global_batch_size=64, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=1e-4, min_lr=1e-5, lr_warmup_iters=10, weight_decay=0.1)
  c.checkpoint.update(save_interval=1000)
  return c
