"""TopKRouter behaviour (REFERENCE.md §2): group limits, token counts with capacity, jitter,
forced balancing, fp64, config errors."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import ConfigError, ModelSpec, MoESpec, base_config
from moejax.moe import router
from moejax.moe.router import TopKRouter
from moejax.train.validate import validate

T, E, K = 96, 16, 4


@pytest.mark.parametrize("score_function", ["softmax", "sigmoid"])
def test_group_limited_routing_uses_at_most_group_topk_groups(score_function):
  logits = jax.random.normal(jax.random.key(0), (T, E))
  bias = jax.random.normal(jax.random.key(1), (E,)) if score_function == "sigmoid" else None
  _, idx = router.topk_routing_sparse(logits, K, num_groups=4, group_topk=2, score_function=score_function,
                                      expert_bias=bias)
  groups = np.asarray(idx) // (E // 4)
  assert max(len(set(row)) for row in groups) <= 2
  _, free = router.topk_routing_sparse(logits, K, score_function=score_function, expert_bias=bias)
  assert max(len(set(row)) for row in np.asarray(free) // (E // 4)) > 2  # the limit is what bites


def _route(x, **spec_kw):
  spec = ModelSpec(hidden_size=x.shape[1], dtype="float32", moe=MoESpec(num_experts=E)).replace(router_topk=K, **spec_kw)
  r = TopKRouter(spec)
  variables = r.init(jax.random.key(1), x)
  return r.apply(variables, x, mutable=["moe_state"])[0]


def test_token_counts_dropless_dropping_and_padded():
  x = jax.random.normal(jax.random.key(0), (T, 32))
  cap = router.expert_capacity(T, E, K, 1.0)
  dropless = _route(x)
  assert float(dropless.tokens_per_expert_E.sum()) == T * K and float(dropless.dropped_fraction) == 0
  dropped = _route(x, expert_capacity_factor=1.0)
  assert (np.asarray(dropped.tokens_per_expert_E) <= cap).all()
  assert float(dropped.dropped_fraction) > 0
  np.testing.assert_allclose(dropped.dropped_fraction, 1 - dropped.tokens_per_expert_E.sum() / (T * K))
  # dropped pairs carry probability 0 in probs_TK (what the dispatchers combine with)
  kept_TK = np.take_along_axis(np.asarray(dropped.routing_map_TE), np.asarray(dropped.idx_TK), 1)
  assert (np.asarray(dropped.probs_TK)[~kept_TK] == 0).all()
  padded = _route(x, expert_capacity_factor=1.0, pad_expert_input_to_capacity=True)
  np.testing.assert_array_equal(padded.tokens_per_expert_E, np.full(E, cap))


def test_input_jitter_needs_an_rng_and_perturbs_within_eps():
  x = jax.random.normal(jax.random.key(0), (T, 32))
  spec = ModelSpec(hidden_size=32, dtype="float32", moe=MoESpec(num_experts=E)).replace(router_topk=K, input_jitter_eps=0.01)
  r = TopKRouter(spec)
  variables = r.init({"params": jax.random.key(1), "router": jax.random.key(2)}, x)
  with pytest.raises(ValueError, match="input_jitter_eps needs a 'router' rng"):
    r.apply(variables, x)
  a = r.apply(variables, x, rngs={"router": jax.random.key(3)})
  b = r.apply(variables, x, rngs={"router": jax.random.key(4)})
  plain = TopKRouter(ModelSpec(hidden_size=32, dtype="float32", moe=MoESpec(num_experts=E)).replace(router_topk=K)).apply(
      variables, x)
  assert not np.array_equal(a.probs_TK, b.probs_TK)
  assert not np.array_equal(a.probs_TK, plain.probs_TK)
  # a 1% multiplicative jitter of the input moves the weights only a little
  same = np.all(np.asarray(a.idx_TK) == np.asarray(plain.idx_TK), axis=1)
  assert np.abs(np.asarray(a.probs_TK) - np.asarray(plain.probs_TK))[same].max() < 0.05


def test_force_load_balancing_ignores_the_input_and_keeps_a_gradient():
  x1 = jax.random.normal(jax.random.key(0), (4096, 32))
  x2 = 5 * jax.random.normal(jax.random.key(9), (4096, 32))
  spec = ModelSpec(hidden_size=32, dtype="float32", moe=MoESpec(num_experts=E)).replace(
      router_topk=K, router_force_load_balancing=True)
  r = TopKRouter(spec)
  variables = r.init(jax.random.key(1), x1)
  a = r.apply(variables, x1, rngs={"router": jax.random.key(5)})
  b = r.apply(variables, x2, rngs={"router": jax.random.key(5)})
  np.testing.assert_array_equal(a.idx_TK, b.idx_TK)
  counts = np.asarray(a.tokens_per_expert_E)
  assert counts.max() / counts.mean() < 1.1  # random logits spread 16k pairs evenly
  g = jax.grad(lambda x: jnp.sum(r.apply(variables, x, rngs={"router": jax.random.key(5)}).probs_TK ** 2))(x1)
  assert float(jnp.abs(g).max()) > 0  # straight-through: the gate still learns


def test_sinkhorn_routing_balances_and_weights_by_softmax():
  logits = 3 * jax.random.normal(jax.random.key(0), (256, 8))
  probs, rmap, idx = router.sinkhorn_routing(logits, 2)
  counts = np.asarray(rmap).sum(0)
  greedy = np.asarray(router.topk_routing(logits, 2)[1]).sum(0)
  assert counts.max() - counts.min() < greedy.max() - greedy.min()
  np.testing.assert_allclose(probs, jax.nn.softmax(logits, -1) * rmap, rtol=1e-6)


def test_router_dtype_fp64_in_a_64_bit_process():
  code = (
      "import jax, jax.numpy as jnp, numpy as np\n"
      "from moejax.config import ModelSpec, MoESpec\n"
      "from moejax.moe.router import TopKRouter\n"
      "x = jax.random.normal(jax.random.key(0), (64, 16), jnp.float32)\n"
      "r = TopKRouter(ModelSpec(hidden_size=16, dtype='float32', moe=MoESpec(num_experts=8)).replace(\n"
      "    router_topk=2, router_dtype='fp64', aux_loss_coeff=0.1))\n"
      "v = r.init(jax.random.key(1), x)\n"
      "out = r.apply(v, x)\n"
      "assert out.probs_TK.dtype == jnp.float64, out.probs_TK.dtype\n"
      "w = np.asarray(v['params']['kernel'].value, np.float64)\n"
      "lg = np.asarray(x, np.float64) @ w\n"
      "top = -np.sort(-lg, 1)[:, :2]\n"
      "p = np.exp(top - top.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)\n"
      "np.testing.assert_allclose(out.probs_TK, p, rtol=1e-12)\n"
      "print('ok')\n")
  env = dict(os.environ, JAX_ENABLE_X64="1", JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
  r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
  assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("overrides, needle", [
    (dict(router_load_balancing_type="aux"), "router_load_balancing_type='aux'"),
    (dict(router_load_balancing_type=["aux_loss", "seq_aux_loss"], aux_loss_coeff=[1e-2]), "list of 2 numbers"),
    (dict(router_load_balancing_type="aux_loss", aux_loss_coeff=[1e-2]), "is a list but"),
    (dict(router_enable_expert_bias=True), "router_score_function='sigmoid'"),
    (dict(pad_expert_input_to_capacity=True), "needs moe.expert_capacity_factor"),
    (dict(router_load_balancing_type="sinkhorn", aux_loss_coeff=1e-2), "set moe.aux_loss_coeff=0"),
    (dict(router_load_balancing_type="sinkhorn", aux_loss_coeff=0.0, expert_capacity_factor=1.0), "not sinkhorn"),
    (dict(router_topk=1), "router_pre_softmax=True"),
    (dict(token_drop_policy="random"), "token_drop_policy"),
    (dict(input_jitter_eps=2.0), "input_jitter_eps"),
])
def test_config_errors_name_the_key_and_the_fix(overrides, needle):
  c = base_config()
  c.moe.num_experts = 8
  c.moe.update(**overrides)
  with pytest.raises(ConfigError, match=None) as e:
    validate(c)
  assert needle in str(e.value)


def test_config_accepts_every_mode():
  for kw in (dict(router_load_balancing_type=["aux_loss", "seq_aux_loss", "global_aux_loss"],
                  aux_loss_coeff=[1e-2, 1e-3, 1e-2]),
             dict(router_score_function="sigmoid", router_enable_expert_bias=True, router_load_balancing_type="none"),
             dict(expert_capacity_factor=1.25, token_drop_policy="position", pad_expert_input_to_capacity=True),
             dict(router_load_balancing_type="sinkhorn", aux_loss_coeff=0.0),
             dict(router_force_load_balancing=True, input_jitter_eps=0.01)):
    c = base_config()
    c.moe.num_experts = 8
    c.moe.update(**kw)
    validate(c)


def test_group_scoring_max_picks_groups_by_their_best_expert():
  """DeepSeek-V2's group_limited_greedy: groups ranked by their highest score (NumPy reference)."""
  logits = np.random.default_rng(3).normal(size=(T, E)).astype(np.float32)
  probs, idx = router.topk_routing_sparse(jnp.asarray(logits), K, use_pre_softmax=True, num_groups=4,
                                          group_topk=2, group_scoring="max")
  scores = np.exp(logits - logits.max(1, keepdims=True))
  scores /= scores.sum(1, keepdims=True)
  best_groups = np.argsort(-scores.reshape(T, 4, E // 4).max(-1), axis=1)[:, :2]
  allowed = np.zeros((T, E), bool)
  for t in range(T):
    for g in best_groups[t]:
      allowed[t, g * (E // 4):(g + 1) * (E // 4)] = True
  want_idx = np.argsort(-np.where(allowed, scores, -1), axis=1)[:, :K]
  np.testing.assert_array_equal(np.sort(np.asarray(idx), 1), np.sort(want_idx, 1))
  np.testing.assert_allclose(probs, np.take_along_axis(scores, np.asarray(idx), 1), rtol=1e-6)
  cfg = base_config()
  cfg.moe.update(num_experts=E, router_num_groups=4, router_group_topk=2, router_group_scoring="max")
  from moejax.config import model_spec
  assert model_spec(cfg).moe.router.router_group_scoring == "max"
