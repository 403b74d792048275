"""GLM-4.5 (355B parameters + one MTP layer, 32B active): 92 layers (the first 3 dense),
grouped-query attention (96 query heads, 8 KV heads of 128, QKV biases, per-head QK-norm, RoPE on
half of each head), 1 shared + 160 routed experts top-8 of width 1536, sigmoid routing with the
aux-loss-free expert bias, routed scaling 2.5, Multi-Token Prediction depth 1.

Architecture: zai-org/GLM-4.5 config.json (transformers' Glm4MoeForCausalLM; hf-to-moejax --family
glm4_moe reads it to the same keys). Training values: as configs/glm4_5_air.py (the GLM-4.5 report
gives both models the same recipe).
Layout: 256 H200 (32 nodes × 8): tp=8 with sequence parallelism, ep=32 × etp=8 (five experts per
expert-parallel rank, over 8 GPUs): ~1.3B expert + 1.8B other parameters per GPU.
"""
import pathlib

from moejax.config.recipes import load_recipe


def get_config():
  c = load_recipe(str(pathlib.Path(__file__).with_name("glm4_5_air.py")))
  c.model.update(num_layers=92, hidden_size=5120, ffn_hidden_size=12288, qk_layernorm=True)
  c.moe.update(num_experts=160, ffn_hidden_size=1536, shared_expert_intermediate_size=1536,
               layer_freq=[0] * 3 + [1] * 89, router_topk_scaling_factor=2.5)
  c.parallel.update(tp=8, ep=32, etp=8)
  return c
