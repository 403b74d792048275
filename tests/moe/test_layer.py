"""Dropless MoELayer (sort-based permute + grouped GEMM) equals the SequentialMLP loop."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import ModelSpec, MoESpec, RouterSpec
from moejax.moe.experts import SequentialMLP
from moejax.moe.layer import MoELayer
from moejax.moe.router import TopKRouter

SPEC = ModelSpec(hidden_size=32, dtype="float32", init_method_std=0.2,
                 moe=MoESpec(num_experts=6, ffn_hidden_size=24, router=RouterSpec(router_topk=2)))


def _reference(params, x_BSH, spec):
  B, S, H = x_BSH.shape
  route = TopKRouter(spec).apply({"params": params["router"]}, x_BSH.reshape(B * S, H))
  out = SequentialMLP(spec).apply({"params": params["experts"]}, x_BSH.reshape(B * S, H), route.probs_TK,
                                  route.idx_TK)
  return out.reshape(B, S, H)


@pytest.mark.parametrize("starve_expert", [False, True])
def test_moe_layer_matches_sequential_mlp(starve_expert):
  x = jax.random.normal(jax.random.key(1), (2, 8, SPEC.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(SPEC).init)(jax.random.key(0), x)["params"])
  if starve_expert:  # expert 3 receives no token: its gradient must be exactly zero, not NaN
    x = x.at[..., 0].set(jnp.abs(x[..., 0]) + 1.0)
    params["router"]["kernel"] = params["router"]["kernel"].at[:, 3].set(0.0).at[0, 3].set(-100.0)
  cot = jax.random.normal(jax.random.key(2), x.shape)

  def loss(p, x, fn):
    return jnp.sum(fn(p, x) * cot)

  ours = lambda p, x: MoELayer(SPEC).apply({"params": p}, x)[0]
  ref = lambda p, x: _reference(p, x, SPEC)
  np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
  g_ours = jax.grad(loss, argnums=(0, 1))(params, x, ours)
  g_ref = jax.grad(loss, argnums=(0, 1))(params, x, ref)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  if starve_expert:
    B, S, H = x.shape
    route = TopKRouter(SPEC).apply({"params": params["router"]}, x.reshape(B * S, H))
    assert not np.any(np.asarray(route.idx_TK) == 3)
    gw1 = g_ours[0]["experts"]["w1"][3]
    assert np.all(np.isfinite(gw1)) and np.all(gw1 == 0.0)


def test_tokens_per_expert_counts_every_routed_pair():
  x = jax.random.normal(jax.random.key(3), (3, 5, SPEC.hidden_size))
  variables = jax.jit(MoELayer(SPEC).init)(jax.random.key(0), x)
  _, stats = MoELayer(SPEC).apply(variables, x)
  assert float(stats.tokens_per_expert_E.sum()) == 3 * 5 * SPEC.moe.router.router_topk


def test_probs_on_input_scale_the_experts_input():
  """moe.apply_probs_on_input (Megatron's --moe-apply-probs-on-input, top-1): out = W2 swiglu(W1 (p x))
  instead of p W2 swiglu(W1 x), written out per token; values and gradients."""
  from moejax.moe.experts import swiglu_interleaved
  top1 = SPEC.replace(router_topk=1, router_pre_softmax=True)
  spec = top1.replace(apply_probs_on_input=True)
  x = jax.random.normal(jax.random.key(1), (2, 8, spec.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(spec).init)(jax.random.key(0), x)["params"])

  def ref(p, x_BSH):
    x_TH = x_BSH.reshape(-1, spec.hidden_size)
    route = TopKRouter(spec).apply({"params": p["router"]}, x_TH)
    w1, w2 = p["experts"]["w1"][route.idx_TK[:, 0]], p["experts"]["w2"][route.idx_TK[:, 0]]
    h = jnp.einsum("th,thf->tf", route.probs_TK[:, :1] * x_TH, w1)
    return jnp.einsum("tf,tfh->th", swiglu_interleaved(h), w2).reshape(x_BSH.shape)

  ours = lambda p, x: MoELayer(spec).apply({"params": p}, x)[0]  # noqa: E731
  np.testing.assert_allclose(ours(params, x), ref(params, x), rtol=1e-5, atol=1e-5)
  assert not np.allclose(ours(params, x), MoELayer(top1).apply({"params": params}, x)[0],
                         atol=1e-3)
  cot = jax.random.normal(jax.random.key(2), x.shape)
  g_ours = jax.grad(lambda p, x: jnp.sum(ours(p, x) * cot), argnums=(0, 1))(params, x)
  g_ref = jax.grad(lambda p, x: jnp.sum(ref(p, x) * cot), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="moe.apply_probs_on_input=True needs moe.router_topk=1, not 2"):
    SPEC.replace(apply_probs_on_input=True)
