"""Run inside the HF transformers peer venv (CPU torch): tiny random models of every family.

  python hf_models.py build OUT    one directory per family: save_pretrained (sharded, with an
                                   index), tokens.json and ref_logits.npy (fp32 [T, V])
  python hf_models.py check OUT    from_pretrained every OUT/<family>_export (written by moejax):
                                   its logits must equal ref_logits.npy exactly
  python hf_models.py build-variants OUT   the same for VARIANTS (other corners of each family)
  python hf_models.py logits DIR   DIR/hf_logits.npy: from_pretrained(DIR)'s logits for DIR/tokens.json

The configs exercise each family's tricky options: head_dim != hidden/heads, QKV and output
biases, QK-norm, YaRN, mlp_only_layers with decoder_sparse_step, tied embeddings, the shared-expert
sigmoid gate, norm_topk_prob both ways, MLA with and without q_lora_rank, group-limited routing
(max and top-2 sum), routed scaling, a non-zero e_score_correction_bias, dense-first layers, RoPE on
half of each head (GLM-4.5), and DeepSeek-V3 and GLM-4.5 MTP layers appended the way they ship
(transformers ignores them).
Every weight is random (norm scales around 1) so a misplaced tensor shows in the logits.
"""
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.torch import save_file

T = 20
COMMON = dict(vocab_size=100, hidden_size=32, intermediate_size=48, num_attention_heads=4, initializer_range=0.1)
YARN = dict(rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=8)

CONFIGS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(COMMON, num_hidden_layers=2, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                     num_experts_per_tok=2)),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(COMMON, num_hidden_layers=4, num_key_value_heads=2, num_experts=6, num_experts_per_tok=2,
                       moe_intermediate_size=16, shared_expert_intermediate_size=24, decoder_sparse_step=2,
                       mlp_only_layers=[1], tie_word_embeddings=True)),  # MoE: layer 3 only
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(COMMON, num_hidden_layers=3, num_key_value_heads=2, head_dim=12, num_experts=8,
                       num_experts_per_tok=3, moe_intermediate_size=16, norm_topk_prob=True, mlp_only_layers=[2],
                       attention_bias=True, rope_parameters=dict(YARN, rope_theta=5000.0))),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(COMMON, num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=16,
                         qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=2, n_group=4,
                         topk_group=2, topk_method="group_limited_greedy", routed_scaling_factor=2.0,
                         rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707))),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(COMMON, num_hidden_layers=3, first_k_dense_replace=1, q_lora_rank=12, kv_lora_rank=16,
                         qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=8,
                         num_experts_per_tok=2, moe_intermediate_size=16, n_shared_experts=1, n_group=4, topk_group=2,
                         routed_scaling_factor=2.5, norm_topk_prob=True, num_key_value_heads=4,
                         rope_parameters=dict(YARN, mscale=1.0, mscale_all_dim=1.0))),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM",
                 dict(COMMON, num_hidden_layers=3, num_key_value_heads=2, n_routed_experts=8, num_experts_per_tok=2,
                      moe_intermediate_size=16, n_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
                      norm_topk_prob=True, first_k_dense_replace=1, attention_bias=True, use_qk_norm=True,
                      rope_parameters=dict(rope_type="default", rope_theta=5000.0, partial_rotary_factor=0.5))),
}

# Other corners of the same families (tests/convert/test_hf_parity.py, slow): top-1 routing, tied
# embeddings, no q_lora in V3 / q_lora in V2, rope_interleave=False, attention_bias, a zero-width
# shared expert, norm_topk_prob=False with sigmoid, YaRN's beta values, other eps and vocab sizes.
V = dict(vocab_size=77, hidden_size=24, intermediate_size=40, num_attention_heads=6, initializer_range=0.1)
VARIANTS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                dict(V, num_hidden_layers=3, num_key_value_heads=6, num_local_experts=3, num_experts_per_tok=1,
                     tie_word_embeddings=True, rms_norm_eps=1e-6,
                     rope_parameters=dict(rope_type="default", rope_theta=500.0))),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  dict(V, num_hidden_layers=3, num_key_value_heads=3, num_experts=5, num_experts_per_tok=3,
                       moe_intermediate_size=8, shared_expert_intermediate_size=12, norm_topk_prob=True, qkv_bias=False,
                       mlp_only_layers=[0], rope_parameters=dict(YARN, factor=2.0, original_max_position_embeddings=10,
                                                                 beta_fast=16, beta_slow=2))),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  dict(V, num_hidden_layers=2, num_key_value_heads=1, head_dim=8, num_experts=4, num_experts_per_tok=1,
                       moe_intermediate_size=8, tie_word_embeddings=True, rms_norm_eps=1e-5)),
    "deepseek_v2": ("DeepseekV2Config", "DeepseekV2ForCausalLM",
                    dict(V, num_hidden_layers=2, q_lora_rank=10, kv_lora_rank=12, qk_nope_head_dim=6, qk_rope_head_dim=2,
                         v_head_dim=10, n_routed_experts=6, num_experts_per_tok=3, moe_intermediate_size=8,
                         n_shared_experts=0, topk_method="greedy", attention_bias=True, rms_norm_eps=1e-5,
                         rope_parameters=dict(YARN, factor=8.0, original_max_position_embeddings=6, mscale=1.0,
                                              mscale_all_dim=0.5))),
    "deepseek_v3": ("DeepseekV3Config", "DeepseekV3ForCausalLM",
                    dict(V, num_hidden_layers=4, first_k_dense_replace=2, q_lora_rank=None, kv_lora_rank=12,
                         qk_nope_head_dim=4, qk_rope_head_dim=6, v_head_dim=4, n_routed_experts=12,
                         num_experts_per_tok=3, moe_intermediate_size=8, n_shared_experts=2, n_group=3, topk_group=2,
                         routed_scaling_factor=1.5, norm_topk_prob=False, num_key_value_heads=6, rope_interleave=False,
                         attention_bias=True, tie_word_embeddings=True, rms_norm_eps=1e-5)),
    "glm4_moe": ("Glm4MoeConfig", "Glm4MoeForCausalLM",  # transformers' default partial_rotary_factor (0.5)
                 dict(V, num_hidden_layers=3, num_key_value_heads=3, n_routed_experts=6, num_experts_per_tok=3,
                      moe_intermediate_size=8, n_shared_experts=2, n_group=1, topk_group=1, norm_topk_prob=False,
                      first_k_dense_replace=0, tie_word_embeddings=True, rms_norm_eps=1e-6)),
}


def _randomize(model, gen):
  with torch.no_grad():
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
      if not p.is_floating_point() or "inv_freq" in name:
        continue
      mean = 1.0 if name.endswith("norm.weight") or "layernorm" in name else 0.0
      p.copy_(mean + 0.1 * torch.randn(p.shape, generator=gen))


def _append_mtp_layer(directory, model, gen):
  """DeepSeek-V3's (and GLM-4.5's) MTP layer as they ship it: index num_hidden_layers, an MoE decoder layer
  plus enorm, hnorm, eh_proj, shared_head.norm and copies of the embedding and head; in its own
  shard, listed in the index."""
  cfg = model.config
  L, H = cfg.num_hidden_layers, cfg.hidden_size
  state = model.state_dict()
  tensors = {}
  rand = lambda *shape: 0.1 * torch.randn(*shape, generator=gen)  # noqa: E731
  for k, v in state.items():
    if not k.startswith(f"model.layers.{L - 1}."):
      continue
    k = k.replace(f"layers.{L - 1}.", f"layers.{L}.")
    if k.endswith("experts.gate_up_proj"):  # in memory the experts are fused; on disk one per expert
      E, F2, _ = v.shape
      for e in range(E):
        tensors[k.replace("gate_up_proj", f"{e}.gate_proj.weight")] = rand(F2 // 2, H)
        tensors[k.replace("gate_up_proj", f"{e}.up_proj.weight")] = rand(F2 // 2, H)
    elif k.endswith("experts.down_proj"):
      for e in range(v.shape[0]):
        tensors[k.replace("down_proj", f"{e}.down_proj.weight")] = rand(*v.shape[1:])
    else:
      tensors[k] = rand(*v.shape) + (1.0 if k.endswith("norm.weight") else 0.0)
  tensors[f"model.layers.{L}.enorm.weight"] = 1 + 0.1 * torch.randn(H, generator=gen)
  tensors[f"model.layers.{L}.hnorm.weight"] = 1 + 0.1 * torch.randn(H, generator=gen)
  tensors[f"model.layers.{L}.shared_head.norm.weight"] = 1 + 0.1 * torch.randn(H, generator=gen)
  tensors[f"model.layers.{L}.eh_proj.weight"] = 0.1 * torch.randn(H, 2 * H, generator=gen)
  tensors[f"model.layers.{L}.embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()
  tensors[f"model.layers.{L}.shared_head.head.weight"] = state["lm_head.weight"].clone()
  shard = "model-mtp.safetensors"
  save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(directory, shard), metadata={"format": "pt"})
  index_path = os.path.join(directory, "model.safetensors.index.json")
  index = json.load(open(index_path))
  index["weight_map"].update({k: shard for k in tensors})
  json.dump(index, open(index_path, "w"), indent=2)


def _logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor([tokens])).logits[0].float().numpy()


def build(out, configs=CONFIGS):
  for i, (family, (config_cls, model_cls, kwargs)) in enumerate(configs.items()):
    gen = torch.Generator().manual_seed(i)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config).eval()
    _randomize(model, gen)
    d = os.path.join(out, family)
    model.save_pretrained(d, max_shard_size="40KB")
    if family in ("deepseek_v3", "glm4_moe") and configs is CONFIGS:
      _append_mtp_layer(d, model, gen)
    tokens = torch.randint(0, config.vocab_size, (T,), generator=gen).tolist()
    json.dump(tokens, open(os.path.join(d, "tokens.json"), "w"))
    np.save(os.path.join(d, "ref_logits.npy"), _logits(model, tokens))


def check(out):
  for family, (_, model_cls, _) in CONFIGS.items():
    d = os.path.join(out, family + "_export")
    model = getattr(transformers, model_cls).from_pretrained(d).eval()
    tokens = json.load(open(os.path.join(out, family, "tokens.json")))
    want = np.load(os.path.join(out, family, "ref_logits.npy"))
    got = _logits(model, tokens)
    assert np.array_equal(got, want), (family, float(np.abs(got - want).max()))
    print(family, "ok")


def logits(d):
  """DIR/hf_logits.npy: the logits of the checkpoint in DIR (loaded by its config.json) for DIR/tokens.json."""
  model = transformers.AutoModelForCausalLM.from_pretrained(d).eval()
  np.save(os.path.join(d, "hf_logits.npy"), _logits(model, json.load(open(os.path.join(d, "tokens.json")))))


if __name__ == "__main__":
  torch.set_num_threads(1)
  transformers.logging.set_verbosity_error()
  commands = {"build": build, "check": check, "build-variants": lambda out: build(out, VARIANTS), "logits": logits}
  commands[sys.argv[1]](sys.argv[2])
