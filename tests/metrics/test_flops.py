"""Parameter counts against the built model, FLOPs per token against the formula written out."""
import jax

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
