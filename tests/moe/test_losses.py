"""Load-balancing losses: REFERENCE.md §2 behaviour (uniform → coeff, seq_aux, padding = truncation)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import ModelSpec, MoESpec
from moejax.moe import losses
from moejax.moe.router import TopKRouter

T, E, K = 32, 8, 2


def _balanced_map(T, E, K):
  rmap = np.zeros((T, E), bool)
  for t in range(T):
    rmap[t, [(t * K + k) % E for k in range(K)]] = True
  assert (rmap.sum(0) == T * K // E).all()
  return jnp.asarray(rmap)


@pytest.mark.parametrize("coeff", [1.0, 1e-2, 0.37])
def test_uniform_routing_gives_exactly_coeff_for_every_loss_type(coeff):
  uniform = jnp.full((T, E), 1.0 / E)
  rmap = _balanced_map(T, E, K)
  got = {
      "aux": losses.aux_loss(uniform, rmap, K, E, coeff),
      "seq_aux": losses.seq_aux_loss(uniform, rmap, 4, K, E, coeff),
      "global_aux": losses.aux_loss(uniform, rmap, K, E, coeff, tokens_per_expert_E=rmap.sum(0) * 1.0),
      "switch": losses.switch_load_balancing_loss(uniform, rmap.sum(0), T, K, E, coeff),
  }
  for name, v in got.items():
    np.testing.assert_allclose(float(v), coeff, rtol=2e-7, err_msg=name)


def test_seq_aux_equals_aux_for_one_sequence_and_the_mean_over_several():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(T, E)).astype(np.float32))
  rmap, scores = losses.compute_routing_scores_for_aux_loss(logits, K, "softmax")
  one = losses.seq_aux_loss(scores, rmap, 1, K, E, 0.1)
  np.testing.assert_allclose(one, losses.aux_loss(scores, rmap, K, E, 0.1), rtol=1e-6)
  B = 4
  per_seq = [losses.aux_loss(scores[b * 8:(b + 1) * 8], rmap[b * 8:(b + 1) * 8], K, E, 0.1) for b in range(B)]
  np.testing.assert_allclose(losses.seq_aux_loss(scores, rmap, B, K, E, 0.1), np.mean(per_seq), rtol=1e-6)


@pytest.mark.parametrize("lb", ["aux_loss", "seq_aux_loss", "global_aux_loss"])
def test_padding_mask_equals_truncation(lb):
  """One sequence of 24 real tokens + 8 padding = the 24 tokens alone, for every statistic."""
  spec = ModelSpec(hidden_size=16, dtype="float32", moe=MoESpec(num_experts=E)).replace(
      router_topk=K, router_load_balancing_type=lb, aux_loss_coeff=0.1, z_loss_coeff=0.01)
  x = jax.random.normal(jax.random.key(0), (32, 16))
  r = TopKRouter(spec)
  variables = r.init(jax.random.key(1), x)
  pad = jnp.arange(32) >= 24
  full = r.apply(variables, x, 1, pad, mutable=["moe_state"])[0]
  cut = r.apply(variables, x[:24], 1, None, mutable=["moe_state"])[0]
  np.testing.assert_allclose(full.aux_loss, cut.aux_loss, rtol=1e-6)
  np.testing.assert_allclose(full.z_loss, cut.z_loss, rtol=1e-6)
  np.testing.assert_array_equal(full.tokens_per_expert_E, cut.tokens_per_expert_E)
  for name in cut.logs:
    np.testing.assert_allclose(full.logs[name], cut.logs[name], rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(full.probs_TE[:24], cut.probs_TE)


def test_z_loss_padding_mask():
  logits = jax.random.normal(jax.random.key(2), (10, 4)) * 3
  pad = jnp.arange(10) >= 7
  np.testing.assert_allclose(losses.z_loss(logits, 0.1, pad), losses.z_loss(logits[:7], 0.1), rtol=1e-6)


@pytest.mark.parametrize("kind", ["aux_loss", "seq_aux_loss", "global_aux_loss", "z_loss"])
def test_router_gets_gradient_only_from_nonzero_coefficients(kind):
  x = jax.random.normal(jax.random.key(0), (24, 16))

  def grad_norm(coeff):
    spec = ModelSpec(hidden_size=16, dtype="float32", moe=MoESpec(num_experts=E)).replace(
                     router_topk=K, router_load_balancing_type=kind if kind != "z_loss" else "aux_loss",
                     aux_loss_coeff=coeff if kind != "z_loss" else 0.0, z_loss_coeff=coeff if kind == "z_loss" else 0.0)
    r = TopKRouter(spec)
    variables = nn.unbox(r.init(jax.random.key(1), x, 3))

    def f(params):
      out = r.apply({**variables, "params": params}, x, 3, mutable=["moe_state"])[0]
      return out.aux_loss + out.z_loss

    g = jax.grad(f)(variables["params"])["kernel"]
    return float(jnp.abs(g).max())

  assert grad_norm(0.0) == 0.0
  assert grad_norm(1e-2) > 0.0
