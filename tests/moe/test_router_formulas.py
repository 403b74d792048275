"""Router and losses against the formulas of REFERENCE.md §1, in plain NumPy."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from moejax.config import ModelSpec, MoESpec
from moejax.moe import losses
from moejax.moe.router import TopKRouter, topk_routing


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def test_post_softmax_topk_matches_numpy():
  logits = np.random.default_rng(0).normal(size=(16, 8)).astype(np.float32)
  probs, routing_map = topk_routing(jnp.asarray(logits), 2)
  idx = np.argsort(-logits, axis=1)[:, :2]
  want = np.zeros_like(logits)
  top = np.take_along_axis(logits, idx, 1)
  np.put_along_axis(want, idx, _softmax(top), 1)
  np.testing.assert_allclose(probs, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(routing_map, want > 0)


def test_aux_loss_formula_and_uniform_routing_gives_coeff():
  rng = np.random.default_rng(1)
  T, E, K, coeff = 32, 8, 2, 0.01
  logits = rng.normal(size=(T, E)).astype(np.float32)
  routing_map, scores = losses.compute_routing_scores_for_aux_loss(jnp.asarray(logits), K, "softmax")
  counts = np.asarray(routing_map).sum(0)
  got = losses.switch_load_balancing_loss(scores, counts, T, K, E, coeff)
  p = _softmax(logits)
  want = coeff * E / (K * T * T) * np.sum(p.sum(0) * counts)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Uniform: every score 1/E and every expert gets T*K/E tokens -> exactly coeff.
  uniform = jnp.full((T, E), 1.0 / E)
  got = losses.switch_load_balancing_loss(uniform, jnp.full((E,), T * K / E), T, K, E, 1.0)
  assert float(got) == 1.0


def test_z_loss_formula():
  logits = np.random.default_rng(2).normal(size=(10, 4)).astype(np.float32)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(losses.z_loss(jnp.asarray(logits), 0.1), 0.1 * np.mean(lse ** 2), rtol=1e-6)


def test_router_module_losses_use_the_formulas():
  spec = ModelSpec(hidden_size=16, dtype="float32", moe=MoESpec(num_experts=4)).replace(
      router_topk=2, aux_loss_coeff=0.5, z_loss_coeff=0.1)
  x = jax.random.normal(jax.random.key(0), (20, 16))
  variables = TopKRouter(spec).init(jax.random.key(1), x)
  out = TopKRouter(spec).apply(variables, x)
  logits = np.asarray(x) @ np.asarray(nn.unbox(variables)["params"]["kernel"])
  p = _softmax(logits)
  counts = np.zeros(4)
  for row in np.argsort(-p, 1)[:, :2]:
    counts[row] += 1
  np.testing.assert_allclose(out.aux_loss, 0.5 * 4 / (2 * 400) * np.sum(p.sum(0) * counts), rtol=1e-5)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(out.z_loss, 0.1 * np.mean(lse ** 2), rtol=1e-5)
  np.testing.assert_array_equal(out.tokens_per_expert_E, counts)
