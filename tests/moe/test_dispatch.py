"""Permute/unpermute and the dispatchers on one device: exact inverses, gather-only gradients,
zero-token experts, capacity drops, shared-expert gate and overlap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import DispatchSpec, ModelSpec, MoESpec, RouterSpec
from moejax.moe import dispatch
from moejax.moe.permute import permute, unpermute
from moejax.moe.experts import SequentialMLP, grouped_mlp
from moejax.moe.layer import MoELayer
from moejax.moe.router import TopKRouter

SPEC = ModelSpec(hidden_size=16, dtype="float32", init_method_std=0.3,
                 moe=MoESpec(num_experts=8, ffn_hidden_size=8, router=RouterSpec(router_topk=2)))


def _float_scatters(jaxpr_text: str) -> list[str]:
  """Lines of a printed jaxpr that scatter floating-point values."""
  lines = [ln.strip() for ln in jaxpr_text.splitlines()]
  return [ln for ln in lines if "scatter" in ln and "=" in ln and ln.split("=")[0].count(":f")]


def _random_routing(key, T, K, E):
  k1, k2 = jax.random.split(key)
  idx_TK = jnp.argsort(jax.random.uniform(k1, (T, E)), axis=1)[:, :K].astype(jnp.int32)
  probs_TK = jax.nn.softmax(jax.random.normal(k2, (T, K)), -1)
  return probs_TK, idx_TK


@pytest.mark.parametrize("num_local,offset", [(8, 0), (3, 2)])
def test_permute_then_unpermute_restores_input_and_gradient(num_local, offset):
  """Megatron's check: permute → scale rows by probs 1/K → unpermute gives back x (and its gradient)
  when every expert is local; with a subset of experts only their rows come back."""
  T, K, H, E = 13, 2, 5, 8
  x_TH = jax.random.normal(jax.random.key(0), (T, H))
  _, idx_TK = _random_routing(jax.random.key(1), T, K, E)
  probs_TK = jnp.full((T, K), 1.0 / K)
  local_TK = (idx_TK >= offset) & (idx_TK < offset + num_local)

  def roundtrip(x):
    x_RH, probs_R, group_sizes, place = permute(x, probs_TK, idx_TK, num_local, offset)
    assert int(group_sizes.sum()) == int(local_TK.sum())
    return unpermute(x_RH * probs_R[:, None], place)

  expected = x_TH * (local_TK.sum(1, keepdims=True) / K)
  np.testing.assert_allclose(roundtrip(x_TH), expected, rtol=1e-6, atol=1e-6)
  cot = jax.random.normal(jax.random.key(2), x_TH.shape)
  g = jax.grad(lambda x: jnp.sum(roundtrip(x) * cot))(x_TH)
  np.testing.assert_allclose(g, cot * (local_TK.sum(1, keepdims=True) / K), rtol=1e-6, atol=1e-6)


def test_permute_with_a_row_bound_keeps_every_kept_pair():
  """num_rows (E_l × capacity under dropping) shrinks the buffer; with ≤ num_rows kept pairs
  the round trip is unchanged."""
  T, K, H, E = 12, 2, 4, 4
  x_TH = jax.random.normal(jax.random.key(8), (T, H))
  probs_TK, idx_TK = _random_routing(jax.random.key(9), T, K, E)
  keep_TK = jnp.arange(T * K).reshape(T, K) % 3 == 0       # 8 kept pairs
  full = permute(x_TH, probs_TK, idx_TK, E, 0, keep_TK)
  small = permute(x_TH, probs_TK, idx_TK, E, 0, keep_TK, num_rows=8)
  assert full[0].shape == (T * K, H) and small[0].shape == (8, H)
  np.testing.assert_array_equal(small[0], full[0][:8])
  np.testing.assert_array_equal(small[2], full[2])
  back = lambda r: unpermute(r[0] * r[1][:, None], r[3])
  np.testing.assert_allclose(back(small), back(full), rtol=1e-6, atol=1e-6)


def test_rows_are_sorted_by_expert_and_empty_rows_are_zero():
  T, K, H, E = 9, 2, 4, 6
  x_TH = jax.random.normal(jax.random.key(3), (T, H))
  probs_TK, idx_TK = _random_routing(jax.random.key(4), T, K, E)
  x_RH, probs_R, group_sizes, place = permute(x_TH, probs_TK, idx_TK, 3, 3)
  n = int(group_sizes.sum())
  experts = np.repeat(np.arange(3) + 3, np.asarray(group_sizes))
  rows = np.asarray(place.src_R[:n])
  for r, (t, e) in enumerate(zip(rows, experts)):
    k = list(np.asarray(idx_TK[t])).index(e)
    np.testing.assert_array_equal(x_RH[r], x_TH[t])
    assert probs_R[r] == probs_TK[t, k]
  assert np.all(np.asarray(x_RH[n:]) == 0) and np.all(np.asarray(probs_R[n:]) == 0)


def test_gradients_of_permute_and_unpermute_are_gathers_not_scatter_adds():
  T, K, H, E = 16, 2, 8, 4
  probs_TK, idx_TK = _random_routing(jax.random.key(5), T, K, E)
  w1 = jax.random.normal(jax.random.key(6), (E, H, 2 * H)) * 0.3
  w2 = jax.random.normal(jax.random.key(7), (E, H, H)) * 0.3

  def layer(x, w1, w2):
    x_RH, probs_R, gs, place = permute(x, probs_TK, idx_TK, E, 0)
    return jnp.sum(unpermute(grouped_mlp(x_RH, gs, probs_R, w1, w2, impl="xla"), place))

  text = str(jax.make_jaxpr(jax.grad(layer, argnums=(0, 1, 2)))(jnp.ones((T, H)), w1, w2))
  assert "gather[" in text
  assert "scatter" in text  # the integer bincount / inverse permutation
  assert _float_scatters(text) == []


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
  params = nn.unbox(MoELayer(spec).init(jax.random.key(0), x)["params"])
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
  params = nn.unbox(MoELayer(base).init(jax.random.key(0), x)["params"])
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
  params = nn.unbox(MoELayer(spec).init(jax.random.key(0), x)["params"])
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
  params = nn.unbox(MoELayer(spec).init(jax.random.key(0), x)["params"])
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
