"""Parameter counts against the built model, FLOPs per token against the formula written out."""
import jax
import pytest

from moejax.config import base_config, model_spec
from moejax.metrics.flops import forward_flops_per_token, num_params, peak_tflops_per_device, train_flops_per_token
from moejax.models.gpt import GPTModel


def _cfg():
  c = base_config()
  c.model.update(num_layers=3, hidden_size=32, ffn_hidden_size=48, num_attention_heads=4, num_query_groups=2,
                 vocab_size=50)
  c.moe.update(num_experts=6, router_topk=2, ffn_hidden_size=16, layer_freq=[0, 1, 1],
               shared_expert_intermediate_size=8, shared_expert_gate=True)
  return c


def test_num_params_equals_the_built_model():
  spec = model_spec(_cfg())
  shapes = jax.eval_shape(GPTModel(spec).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), "int32"))
  assert num_params(spec) == sum(x.size for x in jax.tree.leaves(shapes["params"]))
  # active: the 2 routed experts of 6 a token uses: 4 fewer experts of 3·H·F per MoE layer
  assert num_params(spec) - num_params(spec, active=True) == 2 * 4 * 3 * 32 * 16


def _family(**model):
  """Small configs with each family's pieces (the conversion tests' families)."""
  c = _cfg()
  c.model.update(**model)
  return c


FAMILY_CONFIGS = {
    "qwen2 (qkv bias, tied, gated shared expert)": dict(add_qkv_bias=True, untie_embeddings_and_output_weights=False),
    "qwen3 (qk-norm, all biases, head_dim 12)": dict(qk_layernorm=True, add_qkv_bias=True, attention_output_bias=True,
                                                   kv_channels=12),
    "deepseek-v2 (MLA, no q lora)": dict(multi_latent_attention=True, num_query_groups=4, kv_lora_rank=16,
                                         qk_head_dim=8, qk_pos_emb_head_dim=4, v_head_dim=6, qk_layernorm=True),
    "deepseek-v3 (MLA, q lora, biases, MTP 2)": dict(
        multi_latent_attention=True, num_query_groups=4, q_lora_rank=12, kv_lora_rank=16, qk_head_dim=8,
        qk_pos_emb_head_dim=4, v_head_dim=6, qk_layernorm=True, add_qkv_bias=True, attention_output_bias=True,
        mtp_num_layers=2),
}


@pytest.mark.parametrize("name", FAMILY_CONFIGS)
def test_num_params_equals_the_built_model_for_every_family(name):
  spec = model_spec(_family(**FAMILY_CONFIGS[name]))
  shapes = jax.eval_shape(GPTModel(spec).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), "int32"))
  assert num_params(spec) == sum(x.size for x in jax.tree.leaves(shapes["params"]))
  mtp = {k: v for k, v in shapes["params"].items() if k.startswith("mtp_")}
  assert num_params(spec) - num_params(spec, mtp=False) == sum(x.size for x in jax.tree.leaves(mtp))
  # active: the 2 routed experts of 6 per MoE layer (and per MTP layer, whose block is MoE)
  moe_layers = 2 + spec.mtp_num_layers
  assert num_params(spec) - num_params(spec, active=True) == moe_layers * 4 * 3 * 32 * 16


def test_flops_per_token_formula_mla_and_mtp():
  spec, S = model_spec(_family(**FAMILY_CONFIGS["deepseek-v3 (MLA, q lora, biases, MTP 2)"])), 64
  H, N, V, R = 32, 4, 128, 12
  attn = 2 * (H * R + R * N * 12 + H * (16 + 4) + 16 * N * (8 + 6) + N * 6 * H) + 2 * N * (12 + 6) * S / 2
  dense = 2 * 3 * H * 48
  moe = 2 * H * 6 + 2 * 2 * 3 * H * 16 + 2 * (3 * H * 8 + H)
  mtp = 2 * (2 * H * H) + attn + moe + 2 * H * V                      # projection, block, its own head pass
  assert forward_flops_per_token(spec, S) == 2 * H * V + 3 * attn + dense + 2 * moe + 2 * mtp


def test_flops_per_token_formula():
  spec, S = model_spec(_cfg()), 64
  H, D, N, K, V = 32, 8, 4, 2, 128  # vocab 50 padded to a multiple of 128
  attn = 2 * H * D * (2 * N + 2 * K) + 2 * 2 * N * D * S / 2            # projections + causal scores
  dense = 2 * 3 * H * 48
  moe = 2 * H * 6 + 2 * 2 * 3 * H * 16 + 2 * (3 * H * 8 + H)            # router, top-2 experts, gated shared
  want = 2 * H * V + 3 * attn + dense + 2 * moe
  assert forward_flops_per_token(spec, S) == want
  assert train_flops_per_token(spec, S) == 3 * want


def test_peak_is_configured_or_known_or_none():
  assert peak_tflops_per_device(123.0) == 123.0
  assert peak_tflops_per_device() is None  # CPU: MFU is logged as null
