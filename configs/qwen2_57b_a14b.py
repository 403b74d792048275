"""Qwen2-57B-A14B (57.4B parameters, 14B active): 28 layers, 64 experts top-8 plus a 20480-wide
shared expert behind a sigmoid gate, QKV bias, GQA 28/4, top-k probabilities not renormalised.

Architecture: Qwen/Qwen2-57B-A14B config.json and the Qwen2 report (arXiv 2407.10671).
Training values (not published): Megatron-LM / Pai-Megatron-Patch Qwen2-MoE examples (lr 1e-4,
aux-loss 1e-3, seq 4096).
Layout: 32 H200 (4 nodes × 8): tp=4 with sequence parallelism (heads 28/4, KV 4/4), ep=8 × etp=4
over all 32: ~1.5B expert + 2.0B other (attention, the shared experts, embeddings) parameters per
GPU ≈ 71 GB of model state.
"""
from moejax.config import base_config


def get_config():
  c = base_config()
  c.model.update(num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28,
                 num_query_groups=4, vocab_size=151936, rotary_base=1e6, norm_epsilon=1e-6, add_qkv_bias=True)
  c.moe.update(num_experts=64, router_topk=8, ffn_hidden_size=2560, shared_expert_intermediate_size=20480,
               shared_expert_gate=True, router_pre_softmax=True, aux_loss_coeff=1e-3,
               token_dispatcher_type="alltoall")
  c.parallel.update(tp=4, sequence_parallel=True, ep=8, etp=4)
  c.data.update(source="synthetic")
  c.train.update(train_iters=50, micro_batch_size=1, global_batch_size=256, seq_length=4096,
                 recompute_granularity="full", log_interval=1)
  c.optim.update(lr=1e-4, min_lr=1e-5, lr_warmup_iters=10, weight_decay=0.1)
  return c
