"""HF config.json → moejax keys without the peer: the published models' own config files (as on the
Hub, the older rope_theta/rope_scaling spelling) give our recipes' models, and options moejax cannot
reproduce are refused in one line naming the option."""
import pathlib

import numpy as np
import pytest

from moejax.config import model_spec
from moejax.config.recipes import load_recipe
from moejax.convert.convert import config_from_keys
from moejax.convert.families import FAMILIES, to_hf, to_moejax
from moejax.convert.hf_io import ConversionError
from moejax.metrics.flops import num_params

REPO = pathlib.Path(__file__).resolve().parents[2]

# GLM-4.5-Air's config.json on the Hub; GLM-4.5's differs in its sizes, QK-norm and routed scaling
_GLM45_AIR = dict(
    model_type="glm4_moe", hidden_size=4096, intermediate_size=10944, moe_intermediate_size=1408, num_hidden_layers=46,
    num_attention_heads=96, num_key_value_heads=8, head_dim=128, n_routed_experts=128, n_shared_experts=1,
    num_experts_per_tok=8, first_k_dense_replace=1, n_group=1, topk_group=1, routed_scaling_factor=1.0,
    norm_topk_prob=True, num_nextn_predict_layers=1, attention_bias=True, use_qk_norm=False, partial_rotary_factor=0.5,
    rope_theta=1000000, vocab_size=151552, rms_norm_eps=1e-5, max_position_embeddings=131072, tie_word_embeddings=False)
# The Hub's config.json of each model (fields that shape the computation; FP8 quantization left out).
HUB = {
    "mixtral_8x7b": ("mixtral", dict(
        model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, vocab_size=32000, rms_norm_eps=1e-5,
        rope_theta=1e6, sliding_window=None, router_aux_loss_coef=0.02, tie_word_embeddings=False)),
    "qwen3_30b_a3b": ("qwen3_moe", dict(
        model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, num_experts=128, num_experts_per_tok=8, moe_intermediate_size=768,
        norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], vocab_size=151936, rms_norm_eps=1e-6,
        rope_theta=1e6, rope_scaling=None, attention_bias=False, use_sliding_window=False, tie_word_embeddings=False)),
    "deepseek_v2_lite": ("deepseek_v2", dict(
        model_type="deepseek_v2", hidden_size=2048, intermediate_size=10944, moe_intermediate_size=1408,
        num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, first_k_dense_replace=1, moe_layer_freq=1, q_lora_rank=None, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, topk_method="greedy", n_group=1, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=False, scoring_func="softmax", aux_loss_alpha=0.001, seq_aux=True,
        vocab_size=102400, rms_norm_eps=1e-6, rope_theta=10000, max_position_embeddings=163840,
        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                          mscale=0.707, mscale_all_dim=0.707), tie_word_embeddings=False)),
    "deepseek_v3": ("deepseek_v3", dict(
        model_type="deepseek_v3", hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128, n_routed_experts=256,
        n_shared_experts=1, num_experts_per_tok=8, first_k_dense_replace=3, moe_layer_freq=1, q_lora_rank=1536,
        kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, topk_method="noaux_tc",
        n_group=8, topk_group=4, routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid",
        aux_loss_alpha=0.001, seq_aux=True, num_nextn_predict_layers=1, vocab_size=129280, rms_norm_eps=1e-6,
        rope_theta=10000, max_position_embeddings=163840,
        rope_scaling=dict(type="yarn", factor=40, original_max_position_embeddings=4096, beta_fast=32, beta_slow=1,
                          mscale=1.0, mscale_all_dim=1.0), tie_word_embeddings=False)),
    "glm4_5_air": ("glm4_moe", _GLM45_AIR),
    "glm4_5": ("glm4_moe", dict(_GLM45_AIR, hidden_size=5120, intermediate_size=12288, moe_intermediate_size=1536,
                                num_hidden_layers=92, n_routed_experts=160, first_k_dense_replace=3,
                                routed_scaling_factor=2.5, use_qk_norm=True)),
}


def _recipe_spec(name):
  return model_spec(load_recipe(str(REPO / "configs" / f"{name}.py")))


@pytest.mark.parametrize("recipe", sorted(HUB))
def test_hub_config_gives_the_recipe_model(recipe):
  family, raw = HUB[recipe]
  mtp = 1 if FAMILIES[family].mtp else 0  # converted when the checkpoint carries the MTP layer
  ours = model_spec(config_from_keys(to_moejax(FAMILIES[family], raw, mtp)))
  want = _recipe_spec(recipe)
  assert num_params(ours) == num_params(want)
  assert num_params(ours, active=True) == num_params(want, active=True)
  for part in ("attention", "documents"):
    assert getattr(ours, part) == getattr(want, part), part
  keys = ("num_experts", "ffn_hidden_size", "shared_expert_intermediate_size", "layer_freq", "shared_expert_gate")
  assert all(getattr(ours.moe, k) == getattr(want.moe, k) for k in keys)
  router = ("router_topk", "router_score_function", "router_enable_expert_bias", "router_num_groups",
            "router_group_topk", "router_topk_scaling_factor", "router_pre_softmax")
  assert all(getattr(ours.moe.router, k) == getattr(want.moe.router, k) for k in router)
  to_hf(FAMILIES[family], ours, raw, "bfloat16")  # and it can be written back


def test_mixtral_export_writes_the_experts_width_and_refuses_dense_layers():
  """Mixtral's intermediate_size is its experts' width (HF reads nothing else); the export wrote
  model.ffn_hidden_size, which differs in models made in moejax (the peer check is in test_hf_parity)."""
  cfg = load_recipe(str(REPO / "configs" / "tiny_moe.py"))
  assert to_hf(FAMILIES["mixtral"], model_spec(cfg), None, "float32")["intermediate_size"] == cfg.moe.ffn_hidden_size == 128
  cfg.moe.layer_freq = (0, 1, 1, 1)
  with pytest.raises(ConversionError, match=r"moe.layer_freq: layers \[0\] are dense, and every layer of mixtral"):
    to_hf(FAMILIES["mixtral"], model_spec(cfg), None, "float32")


def test_rope_parameters_and_legacy_rope_scaling_agree():
  family, raw = HUB["deepseek_v3"]
  modern = {k: v for k, v in raw.items() if k not in ("rope_scaling", "rope_theta")}
  modern["rope_parameters"] = dict(raw["rope_scaling"], rope_type="yarn", rope_theta=10000.0)
  del modern["rope_parameters"]["type"]
  assert to_moejax(FAMILIES[family], modern) == to_moejax(FAMILIES[family], raw)


@pytest.mark.parametrize("family,change,message", [
    ("mixtral", dict(sliding_window=4096), "config.json sliding_window=4096 is not supported for mixtral"),
    ("qwen2_moe", dict(use_sliding_window=True), "use_sliding_window=True is not supported"),
    ("qwen3_moe", dict(hidden_act="gelu"), "hidden_act='gelu' is not supported"),
    ("qwen3_moe", dict(rope_parameters=dict(rope_type="llama3", rope_theta=1e4, factor=8.0)),
     "rope_parameters.rope_type='llama3' is not supported"),
    ("qwen3_moe", dict(partial_rotary_factor=0.5), "partial_rotary_factor=0.5 is not supported"),
    ("deepseek_v2", dict(topk_method="noaux_tc"), "topk_method='noaux_tc' is not supported"),
    ("deepseek_v2", dict(mlp_bias=True), "mlp_bias=True is not supported"),
    ("deepseek_v3", dict(n_group=None), "n_group=None is not supported"),
    ("deepseek_v3", dict(moe_layer_freq=2), "moe_layer_freq=2 is not supported"),
    ("deepseek_v3", dict(quantization_config=dict(quant_method="fp8")), "quantization_config='fp8' is not supported"),
    ("deepseek_v3", dict(model_type="deepseek_v2"), "model_type='deepseek_v2' is not --family deepseek_v3"),
    ("glm4_moe", dict(scoring_func="softmax"), "scoring_func='softmax' is not supported for glm4_moe"),
    ("glm4_moe", dict(n_group=None), "n_group=None is not supported for glm4_moe"),
])
def test_unsupported_options_are_refused_in_one_line(family, change, message):
  raw = dict(HUB.get({"mixtral": "mixtral_8x7b", "qwen3_moe": "qwen3_30b_a3b", "deepseek_v3": "deepseek_v3",
                      "glm4_moe": "glm4_5_air"}.get(family, "deepseek_v2_lite"))[1]) if family != "qwen2_moe" else dict(
      model_type="qwen2_moe")
  raw["model_type"] = FAMILIES[family].model_type
  raw.update(change)
  with pytest.raises(ConversionError) as e:
    to_moejax(FAMILIES[family], raw)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_command_line_errors_are_one_line(tmp_path):
  import json

  from safetensors.numpy import save_file

  from moejax.convert.__main__ import main
  raw = dict(HUB["mixtral_8x7b"][1], sliding_window=4096)
  (tmp_path / "config.json").write_text(json.dumps(raw))
  save_file({"x": np.zeros(1, np.float32)}, str(tmp_path / "model.safetensors"))
  for argv, message in [
      (["hf-to-moejax", "--family", "mixtral", "--hf", str(tmp_path), "--out", str(tmp_path / "o")],
       "error: config.json sliding_window=4096 is not supported for mixtral"),
      (["hf-to-moejax", "--family", "mixtral", "--hf", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
       "no config.json"),
      (["moejax-to-hf", "--params", str(tmp_path), "--out", str(tmp_path / "o")], "has no hf_config.json: pass --family"),
  ]:
    with pytest.raises(SystemExit) as e:
      main(argv)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_glm_export_refuses_what_transformers_computes_otherwise():
  """Glm4MoeForCausalLM has no output bias and no softmax router; other families rotate whole heads."""
  spec = _recipe_spec("glm4_5_air")
  to_hf(FAMILIES["glm4_moe"], spec, None, "bfloat16")
  for key, change, family, recipe in (
      ("model.attention_output_bias", dict(attention_output_bias=True), "glm4_moe", "glm4_5_air"),
      ("model.rotary_percent", dict(rotary_percent=0.5), "qwen3_moe", "qwen3_30b_a3b")):
    cfg = load_recipe(str(REPO / "configs" / f"{recipe}.py"))
    cfg.model.update(**change)
    with pytest.raises(ConversionError, match=key.replace(".", r"\.")):
      to_hf(FAMILIES[family], model_spec(cfg), None, "bfloat16")
