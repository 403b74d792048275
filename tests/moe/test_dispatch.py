"""The dispatchers and the MoE layer on one device: zero-token experts, capacity drops,
shared-expert gate and overlap, no loops, dispatcher settings."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import DispatchSpec, ModelSpec, MoESpec, RouterSpec
from moejax.moe import dispatch
from moejax.moe.experts import SequentialMLP
from moejax.moe.layer import MoELayer
from moejax.moe.router import TopKRouter

SPEC = ModelSpec(hidden_size=16, dtype="float32", init_method_std=0.3,
                 moe=MoESpec(num_experts=8, ffn_hidden_size=8, router=RouterSpec(router_topk=2)))


def _layer_loss(spec, params, x, cot):
  out, _ = MoELayer(spec).apply({"params": params}, x)
  return jnp.sum(out * cot)


def _reference(spec, params, x):
  B, S, H = x.shape
  route = TopKRouter(spec).apply({"params": params["router"]}, x.reshape(B * S, H))
  out = SequentialMLP(spec).apply({"params": params["experts"]}, x.reshape(B * S, H), route.probs_TK, route.idx_TK)
  return out.reshape(B, S, H), route


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_expert_with_zero_tokens_gets_zero_gradient(kind):
  spec = SPEC.replace(token_dispatcher_type=kind)
  x = jax.random.normal(jax.random.key(1), (2, 8, spec.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(spec).init)(jax.random.key(0), x)["params"])
  x = x.at[..., 0].set(jnp.abs(x[..., 0]) + 1.0)
  params["router"]["kernel"] = params["router"]["kernel"].at[:, 5].set(0.0).at[0, 5].set(-100.0)
  out = MoELayer(spec).apply({"params": params}, x)[0]
  ref, route = _reference(spec, params, x)
  assert not np.any(np.asarray(route.idx_TK) == 5)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
  g = jax.grad(_layer_loss, argnums=1)(spec, params, x, jnp.ones_like(x))
  for name in ("w1", "w2"):
    assert np.all(np.isfinite(g["experts"][name])) and np.all(np.asarray(g["experts"][name][5]) == 0)


@pytest.mark.parametrize("policy", ["probs", "position"])
def test_capacity_drops_are_the_routers_and_both_dispatchers_agree(policy):
  """With expert_capacity_factor, dispatch skips exactly the pairs the router dropped."""
  base = SPEC.replace(expert_capacity_factor=0.5, token_drop_policy=policy)
  x = jax.random.normal(jax.random.key(11), (2, 16, base.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(base).init)(jax.random.key(0), x)["params"])
  cot = jax.random.normal(jax.random.key(12), x.shape)
  ref, route = _reference(base, params, x)
  kept = np.asarray(jnp.take_along_axis(route.routing_map_TE, route.idx_TK, axis=1))
  assert 0 < kept.sum() < kept.size  # some pairs dropped, some kept
  results = {}
  for kind in ("allgather", "alltoall"):
    spec = base.replace(token_dispatcher_type=kind)
    out = MoELayer(spec).apply({"params": params}, x)[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    results[kind] = (out, jax.grad(_layer_loss, argnums=(1, 2))(spec, params, x, cot))
  a, b = results["allgather"], results["alltoall"]
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gate", [False, True])
def test_shared_experts_gate_and_overlap(gate):
  spec = SPEC.replace(shared_expert_intermediate_size=12, shared_expert_gate=gate)
  x = jax.random.normal(jax.random.key(21), (2, 4, spec.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(spec).init)(jax.random.key(0), x)["params"])
  assert ("gate_weight" in params["shared_experts"]) == gate
  routed, _ = _reference(spec, params, x)
  from moejax.layers.mlp import MLP
  mlp_params = {k: v for k, v in params["shared_experts"].items() if k != "gate_weight"}
  shared = MLP(spec, 12).apply({"params": mlp_params}, x)
  if gate:
    shared = shared * jax.nn.sigmoid(x @ params["shared_experts"]["gate_weight"])
  cot = jax.random.normal(jax.random.key(22), x.shape)
  outs = []
  for overlap in (True, False):
    s = spec.replace(shared_expert_overlap=overlap)
    out = MoELayer(s).apply({"params": params}, x)[0]
    np.testing.assert_allclose(out, routed + shared, rtol=1e-5, atol=1e-5)
    outs.append(jax.grad(_layer_loss, argnums=1)(s, params, x, cot))
  for u, v in zip(*map(jax.tree.leaves, outs)):
    np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_layer_fwd_bwd_has_no_loops(kind):
  """No while loop in the MoE layer's forward+backward: XLA on GPU runs every loop
  iteration with a host round trip (jnp.searchsorted's default method is such a loop)."""
  spec = SPEC.replace(token_dispatcher_type=kind)
  x = jax.random.normal(jax.random.key(31), (2, 8, spec.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(spec).init)(jax.random.key(0), x)["params"])
  grad = jax.jit(lambda p, x_, c: jax.grad(_layer_loss, argnums=(1, 2))(spec, p, x_, c))
  text = grad.lower(params, x, jnp.ones_like(x)).as_text()
  assert "stablehlo.while" not in text


def test_exchange_rows_per_rank():
  assert dispatch.exchange_rows_per_rank(100, 2, 4, None) == 200          # worst case: every pair to one rank
  assert dispatch.exchange_rows_per_rank(100, 2, 4, 1.0) == 56            # 50 rounded up to 8
  assert dispatch.exchange_rows_per_rank(100, 2, 4, 1.25) == 64
  assert dispatch.exchange_rows_per_rank(10, 2, 2, 4.0) == 20             # never above the worst case


def test_bad_dispatcher_settings_name_the_key():
  with pytest.raises(ValueError, match="moe.token_dispatcher_type"):
    DispatchSpec(token_dispatcher_type="deepep")
  with pytest.raises(ValueError, match="moe.token_exchange"):
    DispatchSpec(token_dispatcher_type="alltoall", token_exchange="nvshmem")
  with pytest.raises(ValueError, match="moe.exchange_capacity_factor"):
    DispatchSpec(token_dispatcher_type="alltoall", token_exchange="all_to_all", exchange_capacity_factor=0.5)
