"""Hugging Face config.json ↔ moejax config keys, per model family (transformers 5.25 semantics).

`to_moejax(family, hf_config)` reads every field that shapes the computation and refuses, in one
line naming the option, what moejax cannot reproduce; `to_hf(family, spec, base)` writes a
config.json `from_pretrained` loads (fields moejax does not model — token ids, context length —
come from `base`, the original config kept next to a converted checkpoint).
"""
from __future__ import annotations

import dataclasses
import math

from moejax.config import ModelSpec
from moejax.convert.hf_io import ConversionError
from moejax.layers.rotary import yarn_mscale


@dataclasses.dataclass(frozen=True)
class Family:
  name: str
  model_type: str
  architecture: str
  default_theta: float
  defaults: dict                 # transformers' defaults of the fields read here
  aliases: dict                  # other names of a field (attribute_map)
  moe_prefix: str = "mlp"        # mlp.gate / mlp.experts.{e} (Mixtral: block_sparse_moe)
  experts: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")  # Mixtral: w1, w3, w2
  shared: str | None = None      # shared-expert module name
  mla: bool = False
  v3_router: bool = False        # DeepSeek-V3's: sigmoid, expert bias (e_score_correction_bias), groups
  mtp: bool = False              # MTP layers shipped after the decoder's (transformers ignores them)


_GQA = dict(hidden_act="silu", tie_word_embeddings=False, initializer_range=0.02, head_dim=None,
            use_sliding_window=False, sliding_window=None, decoder_sparse_step=1, mlp_only_layers=[],
            norm_topk_prob=False, router_aux_loss_coef=0.001)
_MLA = dict(hidden_act="silu", tie_word_embeddings=False, initializer_range=0.02, attention_bias=False,
            mlp_bias=False, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
            v_head_dim=128, first_k_dense_replace=0, n_group=None, topk_group=None, routed_scaling_factor=1.0,
            norm_topk_prob=False, rms_norm_eps=1e-6, moe_layer_freq=1)

FAMILIES = {f.name: f for f in (
    Family("mixtral", "mixtral", "MixtralForCausalLM", 1e6,
           dict(_GQA, vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, num_local_experts=8,
                num_experts_per_tok=2, router_jitter_noise=0.0),
           {"num_local_experts": ("num_experts",)}, moe_prefix="block_sparse_moe", experts=("w1", "w3", "w2")),
    Family("qwen2_moe", "qwen2_moe", "Qwen2MoeForCausalLM", 1e4,
           dict(_GQA, vocab_size=151936, hidden_size=2048, intermediate_size=5632, num_hidden_layers=24,
                num_attention_heads=16, num_key_value_heads=16, rms_norm_eps=1e-6, moe_intermediate_size=1408,
                shared_expert_intermediate_size=5632, num_experts_per_tok=4, num_experts=60, qkv_bias=True),
           {"num_experts": ("num_local_experts",)}, shared="shared_expert"),
    Family("qwen3_moe", "qwen3_moe", "Qwen3MoeForCausalLM", 1e4,
           dict(_GQA, vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=24,
                num_attention_heads=32, num_key_value_heads=4, rms_norm_eps=1e-6, attention_bias=False,
                moe_intermediate_size=768, num_experts_per_tok=8, num_local_experts=128),
           {"num_local_experts": ("num_experts",)}),
    Family("deepseek_v2", "deepseek_v2", "DeepseekV2ForCausalLM", 1e4,
           dict(_MLA, vocab_size=102400, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, n_routed_experts=64, n_shared_experts=2, num_experts_per_tok=None,
                moe_intermediate_size=1407, topk_method="greedy"),
           {"n_routed_experts": ("num_experts",)}, shared="shared_experts", mla=True),
    Family("deepseek_v3", "deepseek_v3", "DeepseekV3ForCausalLM", 1e4,
           dict(_MLA, vocab_size=129280, hidden_size=7168, intermediate_size=18432, num_hidden_layers=61,
                num_attention_heads=128, n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8,
                moe_intermediate_size=2048, routed_scaling_factor=2.5, n_group=8, topk_group=4,
                first_k_dense_replace=3, norm_topk_prob=True, rope_interleave=True, num_nextn_predict_layers=1),
           {"n_routed_experts": ("num_local_experts",), "num_nextn_predict_layers": ("num_mtp_layers",)},
           shared="shared_experts", mla=True, v3_router=True, mtp=True),
    # GLM-4.5: grouped-query attention (QKV biases, optional QK-norm, RoPE on half of each head) and
    # DeepSeek-V3's MoE and MTP
    Family("glm4_moe", "glm4_moe", "Glm4MoeForCausalLM", 1e4,
           dict(hidden_act="silu", tie_word_embeddings=False, initializer_range=0.02, head_dim=None,
                vocab_size=151552, hidden_size=4096, intermediate_size=10944, num_hidden_layers=46,
                num_attention_heads=96, num_key_value_heads=8, rms_norm_eps=1e-5, attention_bias=False,
                use_qk_norm=False, moe_intermediate_size=1408, num_experts_per_tok=8, n_shared_experts=1,
                n_routed_experts=128, routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=1,
                norm_topk_prob=True, num_nextn_predict_layers=1, partial_rotary_factor=0.5, moe_layer_freq=1),
           {"n_routed_experts": ("num_local_experts",), "num_nextn_predict_layers": ("num_mtp_layers",)},
           shared="shared_experts", v3_router=True, mtp=True),
)}


class HFConfig:
  """config.json with the family's defaults and field aliases; `refuse` names an unsupported value."""

  def __init__(self, family: Family, raw: dict):
    self.family, self.raw = family, raw

  def __getitem__(self, key):
    for name in (key, *self.family.aliases.get(key, ())):
      if name in self.raw:
        return self.raw[name]
    if key in self.family.defaults:
      return self.family.defaults[key]
    raise ConversionError(f"config.json of {self.family.name} has no {key!r}")

  def refuse(self, key, value, why: str):
    raise ConversionError(f"config.json {key}={value!r} is not supported for {self.family.name}: {why}")


def family(name: str) -> Family:
  if name not in FAMILIES:
    raise ConversionError(f"--family {name!r} is not one of {sorted(FAMILIES)}")
  return FAMILIES[name]


# ------------------------------------------------------------------------------ HF → moejax
def _rope(c: HFConfig) -> dict:
  """Rotary keys from rope_parameters (transformers 5) or rope_theta + rope_scaling (older files)."""
  rope = dict(c.raw.get("rope_parameters") or c.raw.get("rope_scaling") or {})
  if rope and all(isinstance(v, dict) or v is None for v in rope.values()):
    c.refuse("rope_parameters", list(rope), "one set of rotary parameters for all layers is needed")
  theta = rope.get("rope_theta", c.raw.get("rope_theta", c.family.default_theta))
  kind = rope.get("rope_type", rope.get("type", "default"))
  partial = rope.get("partial_rotary_factor", c.raw.get("partial_rotary_factor",
                                                         c.family.defaults.get("partial_rotary_factor")))
  out = {"model.rotary_base": float(theta)}
  if partial not in (None, 1, 1.0):
    if "partial_rotary_factor" not in c.family.defaults:
      c.refuse("partial_rotary_factor", partial, f"transformers' {c.family.architecture} rotates the whole head")
    out["model.rotary_percent"] = float(partial)
  if kind == "default":
    return out
  if kind != "yarn":
    c.refuse("rope_parameters.rope_type", kind, "only 'default' and 'yarn' rotary embeddings")
  if rope.get("truncate", True) is not True:
    c.refuse("rope_parameters.truncate", rope["truncate"], "YaRN's correction range is always truncated")
  original = c.raw.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings") \
      or c.raw.get("max_position_embeddings")
  factor = rope.get("factor") or c.raw["max_position_embeddings"] / original
  mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
  hf_factor = rope.get("attention_factor")
  if hf_factor is None:  # transformers' _compute_yarn_parameters
    hf_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim) if mscale and mscale_all_dim
                 else yarn_mscale(factor))
  ours = dict(rope_type="yarn", rotary_scaling_factor=float(factor), original_max_position_embeddings=int(original),
              beta_fast=float(rope.get("beta_fast") or 32), beta_slow=float(rope.get("beta_slow") or 1),
              mscale=float(mscale or 1.0), mscale_all_dim=float(mscale_all_dim or 0.0))
  derived = yarn_mscale(factor, ours["mscale"]) / yarn_mscale(factor, ours["mscale_all_dim"])
  if not math.isclose(derived, hf_factor, rel_tol=0, abs_tol=1e-12):
    ours["rotary_attention_factor"] = float(hf_factor)
  return {**out, **{f"model.{k}": v for k, v in ours.items()}}


def _moe_pattern_keys(pattern: list[bool]) -> dict:
  if not any(pattern):
    return {"moe.num_experts": None}
  return {"moe.layer_freq": 1 if all(pattern) else [int(p) for p in pattern]}


def _gqa(c: HFConfig) -> dict:
  f, L = c.family, c["num_hidden_layers"]
  head_dim = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
  if f.name == "mixtral":
    if c["sliding_window"] is not None:
      c.refuse("sliding_window", c["sliding_window"], "sliding-window attention is not implemented; set it to null")
    pattern, E = [True] * L, c["num_local_experts"]
  else:
    if c["use_sliding_window"]:
      c.refuse("use_sliding_window", True, "sliding-window attention is not implemented")
    E = c["num_local_experts" if f.name == "qwen3_moe" else "num_experts"]
    step, dense = c["decoder_sparse_step"], set(c["mlp_only_layers"] or [])
    pattern = [l not in dense and E > 0 and (l + 1) % step == 0 for l in range(L)]
  out = {"model.num_query_groups": c["num_key_value_heads"],
         "model.kv_channels": None if head_dim * c["num_attention_heads"] == c["hidden_size"] else head_dim,
         "moe.num_experts": E, "moe.router_topk": c["num_experts_per_tok"],
         "moe.aux_loss_coeff": c["router_aux_loss_coef"], **_moe_pattern_keys(pattern)}
  # HF: softmax over all experts, top-k, renormalised (Mixtral; Qwen with norm_topk_prob) = Megatron's
  # softmax over the top-k logits; not renormalised = Megatron's pre-softmax
  # (top-1: Megatron refuses softmax after top-k, so softmax first and renormalise)
  norm = f.name == "mixtral" or bool(c["norm_topk_prob"])
  out["moe.router_pre_softmax"] = not norm or c["num_experts_per_tok"] == 1
  if norm and c["num_experts_per_tok"] == 1:
    out["moe.router_norm_topk_prob"] = True
  if f.name == "mixtral":
    out["moe.ffn_hidden_size"] = c["intermediate_size"]
    if c["router_jitter_noise"]:
      out["moe.input_jitter_eps"] = c["router_jitter_noise"]
    return out
  out["moe.ffn_hidden_size"] = c["moe_intermediate_size"]
  if f.name == "qwen2_moe":
    out["model.add_qkv_bias"] = bool(c["qkv_bias"])
    if c["shared_expert_intermediate_size"]:
      out.update({"moe.shared_expert_intermediate_size": c["shared_expert_intermediate_size"],
                  "moe.shared_expert_gate": True})
  else:
    out.update({"model.qk_layernorm": True, "model.add_qkv_bias": bool(c["attention_bias"]),
                "model.attention_output_bias": bool(c["attention_bias"])})
  return out


def _deepseek_moe(c: HFConfig) -> dict:
  """The MoE keys of DeepSeek's layout (DeepSeek-V2/V3, GLM-4.5): dense layers first, routed and
  shared experts of one width, routed scaling."""
  L, E = c["num_hidden_layers"], c["n_routed_experts"]
  if c["moe_layer_freq"] != 1:
    c.refuse("moe_layer_freq", c["moe_layer_freq"], "transformers makes every layer after first_k_dense_replace MoE")
  if not c["num_experts_per_tok"]:
    c.refuse("num_experts_per_tok", c["num_experts_per_tok"], "set the experts per token")
  k = c["first_k_dense_replace"] or 0
  out = {"moe.num_experts": E, "moe.router_topk": c["num_experts_per_tok"],
         "moe.ffn_hidden_size": c["moe_intermediate_size"],
         "moe.router_topk_scaling_factor": None if c["routed_scaling_factor"] == 1 else float(c["routed_scaling_factor"]),
         **_moe_pattern_keys([l >= k for l in range(L)])}
  if c["n_shared_experts"]:
    out["moe.shared_expert_intermediate_size"] = c["moe_intermediate_size"] * c["n_shared_experts"]
  if c.raw.get("aux_loss_alpha"):  # DeepSeek's own config: sequence-wise balance loss
    out.update({"moe.aux_loss_coeff": c.raw["aux_loss_alpha"],
                "moe.router_load_balancing_type": "seq_aux_loss" if c.raw.get("seq_aux", True) else "aux_loss"})
  return out


def _v3_router(c: HFConfig, mtp_layers: int) -> dict:
  """DeepSeek-V3's router (also GLM-4.5's): sigmoid scores, the expert bias choosing, groups ranked by
  their top-2 sum, then MTP layers present in the checkpoint."""
  for key, want in (("scoring_func", "sigmoid"), ("topk_method", "noaux_tc")):
    if c.raw.get(key, want) != want:
      c.refuse(key, c.raw[key], f"transformers' {c.family.architecture} always routes as {want}")
  G, g = c["n_group"], c["topk_group"]
  if not G or not g:
    c.refuse("n_group", G, f"transformers' {c.family.architecture} always routes by groups: set n_group and topk_group")
  grouped = G > 1  # one group of all experts (GLM-4.5's n_group 1) is no grouping
  return {"moe.router_score_function": "sigmoid", "moe.router_enable_expert_bias": True,
          "moe.router_num_groups": G if grouped else None, "moe.router_group_topk": g if grouped else None,
          "moe.router_group_scoring": "sum_top2",
          "moe.router_norm_topk_prob": bool(c["norm_topk_prob"]), "model.mtp_num_layers": mtp_layers}


def _mla(c: HFConfig, mtp_layers: int) -> dict:
  if c["mlp_bias"]:
    c.refuse("mlp_bias", True, "MLP biases are not implemented")
  out = {"model.multi_latent_attention": True, "model.qk_layernorm": True,
         "model.num_query_groups": c["num_attention_heads"], "model.q_lora_rank": c["q_lora_rank"],
         "model.kv_lora_rank": c["kv_lora_rank"], "model.qk_head_dim": c["qk_nope_head_dim"],
         "model.qk_pos_emb_head_dim": c["qk_rope_head_dim"], "model.v_head_dim": c["v_head_dim"],
         "model.add_qkv_bias": bool(c["attention_bias"]), "model.attention_output_bias": bool(c["attention_bias"]),
         **_deepseek_moe(c)}
  if c.family.v3_router:
    return {**out, **_v3_router(c, mtp_layers)}
  # transformers' DeepseekV2 ignores norm_topk_prob: softmax, top-k, scaled, never renormalised
  if c.raw.get("scoring_func", "softmax") != "softmax":
    c.refuse("scoring_func", c.raw["scoring_func"], "transformers' DeepseekV2 uses softmax")
  method = c["topk_method"]
  out["moe.router_pre_softmax"] = True
  if method == "group_limited_greedy":
    out.update({"moe.router_num_groups": c["n_group"], "moe.router_group_topk": c["topk_group"],
                "moe.router_group_scoring": "max"})
  elif method != "greedy":
    c.refuse("topk_method", method, "transformers' DeepseekV2 has 'greedy' and 'group_limited_greedy'")
  return out


def _glm(c: HFConfig, mtp_layers: int) -> dict:
  """GLM-4.5: grouped-query attention with biases on q, k, v (not o) and optional QK-norm, DeepSeek-V3's MoE."""
  head_dim = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
  return {"model.num_query_groups": c["num_key_value_heads"],
          "model.kv_channels": None if head_dim * c["num_attention_heads"] == c["hidden_size"] else head_dim,
          "model.add_qkv_bias": bool(c["attention_bias"]), "model.qk_layernorm": bool(c["use_qk_norm"]),
          **_deepseek_moe(c), **_v3_router(c, mtp_layers)}


def to_moejax(f: Family, raw: dict, mtp_layers: int = 0) -> dict:
  """Flat moejax config keys ("model.x", "moe.y") for an HF config.json of family `f`;
  `mtp_layers`: the MTP layers present in the checkpoint (DeepSeek-V3, GLM-4.5)."""
  c = HFConfig(f, raw)
  if raw.get("model_type", f.model_type) != f.model_type:
    raise ConversionError(f"config.json model_type={raw['model_type']!r} is not --family {f.name} "
                          f"(model_type {f.model_type!r})")
  if raw.get("quantization_config"):
    c.refuse("quantization_config", raw["quantization_config"].get("quant_method", "?"),
             "quantized weights; dequantize to bfloat16 first")
  if c["hidden_act"] != "silu":
    c.refuse("hidden_act", c["hidden_act"], "the MLPs are SwiGLU (silu)")
  out = {"model.vocab_size": c["vocab_size"], "model.hidden_size": c["hidden_size"],
         "model.num_layers": c["num_hidden_layers"], "model.num_attention_heads": c["num_attention_heads"],
         "model.ffn_hidden_size": c["intermediate_size"], "model.norm_epsilon": float(c["rms_norm_eps"]),
         "model.untie_embeddings_and_output_weights": not c["tie_word_embeddings"],
         "model.init_method_std": float(c["initializer_range"])}
  out.update(_mla(c, mtp_layers) if f.mla else _glm(c, mtp_layers) if f.name == "glm4_moe" else _gqa(c))
  out.update(_rope(c))
  return out


# ------------------------------------------------------------------------------ moejax → HF
def _rope_hf(spec: ModelSpec) -> dict:
  r, partial = spec.attention.rotary_scaling, spec.attention.rotary_percent
  if r.rope_type == "rope":
    params = {"rope_type": "default", "rope_theta": spec.attention.rotary_base}
    out = {"rope_theta": spec.attention.rotary_base, "rope_parameters": params, "rope_scaling": None}
    if partial != 1:  # in rope_parameters (transformers 5) and at the top (older readers)
      params["partial_rotary_factor"] = out["partial_rotary_factor"] = partial
    return out
  params = {"rope_type": "yarn", "rope_theta": spec.attention.rotary_base, "factor": r.rotary_scaling_factor,
            "original_max_position_embeddings": r.original_max_position_embeddings,
            "beta_fast": r.beta_fast, "beta_slow": r.beta_slow, "mscale": r.mscale, "mscale_all_dim": r.mscale_all_dim}
  if r.rotary_attention_factor is not None:
    params["attention_factor"] = r.rotary_attention_factor
  legacy = {("type" if k == "rope_type" else k): v for k, v in params.items() if k != "rope_theta"}
  return {"rope_theta": spec.attention.rotary_base, "rope_parameters": params, "rope_scaling": legacy}


def _dense_layers(spec: ModelSpec) -> list[int]:
  return [l for l, moe in enumerate(spec.moe_pattern) if not moe]


def _normalised(r) -> bool:
  """Whether the router divides its top-k probabilities by their sum."""
  if r.router_norm_topk_prob is not None:
    return r.router_norm_topk_prob or (r.router_score_function == "softmax" and not r.router_pre_softmax)
  return (r.router_score_function == "softmax" and not r.router_pre_softmax) or (
      r.router_score_function == "sigmoid" and r.router_topk > 1)


def _exportable(f: Family, spec: ModelSpec) -> None:
  """Refuses, naming the key, a model the family's transformers class would compute differently."""
  a, moe, r = spec.attention, spec.moe, spec.moe.router
  v3, qwen3, glm = f.v3_router, f.name == "qwen3_moe", f.name == "glm4_moe"
  wants = {"model.multi_latent_attention": (a.mla.multi_latent_attention, f.mla),
           "moe.router_score_function": (r.router_score_function, "sigmoid" if v3 else "softmax"),
           "moe.shared_expert_gate": (moe.shared_expert_gate, f.name == "qwen2_moe" and bool(
               moe.shared_expert_intermediate_size))}
  if not glm:  # GLM-4.5's use_qk_norm either way
    wants["model.qk_layernorm"] = (a.qk_layernorm, f.mla or qwen3)
  if "partial_rotary_factor" not in f.defaults:
    wants["model.rotary_percent"] = (a.rotary_percent, 1.0)
  if not f.mtp:
    wants["model.mtp_num_layers"] = (spec.mtp_num_layers, 0)
  if not v3:
    wants["moe.router_enable_expert_bias"] = (r.router_enable_expert_bias, False)
  if f.shared is None:
    wants["moe.shared_expert_intermediate_size"] = (moe.shared_expert_intermediate_size, None)
  if f.name == "mixtral":
    wants["model.add_qkv_bias"] = (a.add_qkv_bias, False)
  if f.name in ("mixtral", "qwen2_moe", "glm4_moe"):
    wants["model.attention_output_bias"] = (a.attention_output_bias, False)
  else:  # one attention_bias flag for all of them
    wants["model.attention_output_bias"] = (a.attention_output_bias, a.add_qkv_bias)
  if f.name == "mixtral":
    wants["moe.router_norm_topk_prob"] = (_normalised(r), True)
  if f.name == "deepseek_v2":
    wants["moe.router_pre_softmax"] = (r.router_pre_softmax, True)
    wants["moe.router_norm_topk_prob"] = (_normalised(r), False)
    if r.router_group_topk:
      wants["moe.router_group_scoring"] = (r.router_group_scoring, "max")
  elif v3 and r.router_group_topk:
    top2 = r.router_group_scoring == "sum_top2" or (r.router_group_scoring == "sum_topk"
                                                    and r.router_topk // r.router_group_topk == 2)
    if not top2:
      wants["moe.router_group_scoring"] = (r.router_group_scoring, "sum_top2")
  if not f.mla and not v3:
    wants["moe.router_num_groups"] = (r.router_num_groups, None)
    wants["moe.router_topk_scaling_factor"] = (r.router_topk_scaling_factor in (None, 1.0), True)
  for key, (have, want) in wants.items():
    if have != want:
      raise ConversionError(f"{key}={have!r} cannot be written as {f.name} (transformers' {f.architecture} "
                            f"needs {want!r})")


def _deepseek_moe_hf(f: Family, spec: ModelSpec, dense: list[int]) -> dict:
  """The MoE fields of DeepSeek's layout (DeepSeek-V2/V3, GLM-4.5); with V3's router its fields too."""
  moe, r = spec.moe, spec.moe.router
  k = len(dense)
  if dense != list(range(k)):
    raise ConversionError(f"moe.layer_freq: {f.name} has its dense layers first (first_k_dense_replace), "
                          f"not at layers {dense}")
  shared = moe.shared_expert_intermediate_size or 0
  if shared % spec.moe_ffn_hidden_size:
    raise ConversionError(f"moe.shared_expert_intermediate_size={shared} is not a multiple of "
                          f"moe.ffn_hidden_size={spec.moe_ffn_hidden_size} (n_shared_experts)")
  out = {"first_k_dense_replace": k, "n_routed_experts": moe.num_experts or 0, "num_experts_per_tok": r.router_topk,
         "moe_intermediate_size": spec.moe_ffn_hidden_size, "n_shared_experts": shared // spec.moe_ffn_hidden_size,
         "routed_scaling_factor": r.router_topk_scaling_factor or 1.0,
         # V3's router always routes by groups: one group of all experts = none
         "n_group": r.router_num_groups or (1 if f.v3_router else None),
         "topk_group": r.router_group_topk or (1 if f.v3_router else None)}
  if f.v3_router:
    out.update({"norm_topk_prob": _normalised(r), "num_nextn_predict_layers": spec.mtp_num_layers})
  return out


def to_hf(f: Family, spec: ModelSpec, base: dict | None, dtype: str) -> dict:
  """config.json for `spec` as family `f`; `base` (the original config.json, if any) supplies
  the fields moejax does not model."""
  _exportable(f, spec)
  a, moe, r = spec.attention, spec.moe, spec.moe.router
  out = dict(base or {})
  for key in ("rope_scaling", "rope_parameters", "rope_theta", "torch_dtype"):
    out.pop(key, None)
  out.update({"architectures": [f.architecture], "model_type": f.model_type, "dtype": dtype,
              "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size, "intermediate_size": spec.ffn_hidden_size,
              "num_hidden_layers": spec.num_layers, "num_attention_heads": a.num_attention_heads,
              "rms_norm_eps": spec.norm_epsilon, "tie_word_embeddings": not spec.untie_embeddings_and_output_weights,
              "initializer_range": spec.init_method_std, "hidden_act": "silu", **_rope_hf(spec)})
  E = moe.num_experts or 0
  dense = _dense_layers(spec) if E else list(range(spec.num_layers))
  if f.mla or f.v3_router:
    out.update(_deepseek_moe_hf(f, spec, dense))
    if f.name == "glm4_moe":
      out.update({"num_key_value_heads": a.num_query_groups, "head_dim": spec.head_dim,
                  "attention_bias": a.add_qkv_bias, "use_qk_norm": a.qk_layernorm})
      return out
    m = a.mla
    out.update({"num_key_value_heads": a.num_attention_heads, "q_lora_rank": m.q_lora_rank,
                "kv_lora_rank": m.kv_lora_rank, "qk_nope_head_dim": m.qk_head_dim,
                "qk_rope_head_dim": m.qk_pos_emb_head_dim, "v_head_dim": m.v_head_dim, "attention_bias": a.add_qkv_bias})
    if f.name == "deepseek_v2":
      out["topk_method"] = "group_limited_greedy" if r.router_group_topk else "greedy"
    else:
      out["rope_interleave"] = (base or {}).get("rope_interleave", True)
    return out
  out.update({"num_key_value_heads": a.num_query_groups, "head_dim": spec.head_dim, "num_experts_per_tok": r.router_topk})
  if f.name == "mixtral":  # every layer MoE; intermediate_size is the experts' width
    if dense:
      raise ConversionError(f"moe.layer_freq: layers {dense} are dense, and every layer of mixtral (transformers' "
                            f"{f.architecture}) is an MoE layer; export it as qwen2_moe or qwen3_moe (mlp_only_layers)")
    out.update({"num_local_experts": E, "intermediate_size": spec.moe_ffn_hidden_size, "sliding_window": None})
    return out
  out.update({"num_experts" if f.name == "qwen2_moe" else "num_local_experts": E,
              "moe_intermediate_size": spec.moe_ffn_hidden_size, "decoder_sparse_step": 1, "mlp_only_layers": dense,
              "norm_topk_prob": _normalised(r), "use_sliding_window": False})
  if f.name == "qwen2_moe":
    out.update({"qkv_bias": a.add_qkv_bias, "shared_expert_intermediate_size": moe.shared_expert_intermediate_size or 0})
  else:
    out["attention_bias"] = a.add_qkv_bias
  return out
