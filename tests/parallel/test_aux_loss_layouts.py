"""The aux losses and their gradient w.r.t. the router input are the same on 8 emulated
devices as on one (the router works in the global view, so counts cover every replica)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import base_config, model_spec
from moejax.moe import losses
from moejax.moe.layer import MoELayer

B, S, H = 8, 16, 32


def _cfg(**parallel):
  c = base_config()
  c.model.update(num_layers=1, hidden_size=H, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16,
               router_load_balancing_type=["aux_loss", "seq_aux_loss", "global_aux_loss"],
               aux_loss_coeff=[1e-2, 1e-3, 2e-2], z_loss_coeff=1e-3)
  c.train.update(seq_length=S, micro_batch_size=1, global_batch_size=8)
  c.parallel.update(**parallel)
  return c


def _run(mesh_and_rules, cfg, devices, variables, x_BSH):
  layout, rules = mesh_and_rules(cfg, devices)
  layer = MoELayer(model_spec(cfg))

  def f(x, params):
    _, stats = layer.apply({**variables, "params": params}, x, mutable=["moe_state"])[0]
    return stats.aux_loss + stats.z_loss, stats

  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    g = jax.jit(jax.grad(f, argnums=(0, 1), has_aux=True))
    (gx, gp), stats = g(x_BSH, variables["params"])
  return jax.device_get((gx, gp["router"]["kernel"], stats))


@pytest.fixture(scope="module")
def single(mesh_and_rules):
  cfg = _cfg()
  x = jax.random.normal(jax.random.key(3), (B, S, H))
  variables = nn.unbox(jax.jit(MoELayer(model_spec(cfg)).init)(jax.random.key(0), x))
  return variables, x, _run(mesh_and_rules, cfg, jax.devices()[:1], variables, x)


@pytest.mark.parametrize("parallel", [dict(), dict(ep=4), dict(tp=2, ep=2, sequence_parallel=True)],
                         ids=["dp8", "ep4", "tp2_ep2"])
def test_aux_loss_gradient_is_layout_invariant(single, mesh_and_rules, parallel):
  variables, x, (gx1, gk1, st1) = single
  gx8, gk8, st8 = _run(mesh_and_rules, _cfg(**parallel), jax.devices(), variables, x)
  assert np.abs(gx1).max() > 0
  np.testing.assert_allclose(gx8, gx1, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(gk8, gk1, rtol=1e-5, atol=1e-7)
  for name in st1.logs:
    np.testing.assert_allclose(st8.logs[name], st1.logs[name], rtol=1e-6, err_msg=name)
  np.testing.assert_array_equal(st8.tokens_per_expert_E, st1.tokens_per_expert_E)


def test_global_aux_loss_counts_every_data_parallel_replica(single, mesh_and_rules):
  """On dp=8 each replica holds one sequence; the loss uses the counts of all 8 (NumPy)."""
  variables, x, _ = single
  cfg = _cfg()
  _, _, st = _run(mesh_and_rules, cfg, jax.devices(), variables, x)
  logits = np.asarray(x).reshape(B * S, H) @ np.asarray(variables["params"]["router"]["kernel"])
  rmap, scores = losses.compute_routing_scores_for_aux_loss(jnp.asarray(logits), 2, "softmax")
  counts = np.asarray(rmap).sum(0)
  assert counts.sum() == B * S * 2
  p = np.asarray(scores, np.float64)
  want = 8 / (2 * (B * S) ** 2) * np.sum(p.sum(0) * counts)  # / coeff: the logged value
  np.testing.assert_allclose(st.logs["global_load_balancing_loss"], want, rtol=1e-5)
  np.testing.assert_allclose(st.logs["load_balancing_loss"], want, rtol=1e-5)
  per_replica = [8 / (2 * S ** 2) * np.sum(p[i * S:(i + 1) * S].sum(0) * np.asarray(rmap)[i * S:(i + 1) * S].sum(0))
                 for i in range(B)]
  np.testing.assert_allclose(st.logs["seq_load_balancing_loss"], np.mean(per_replica), rtol=1e-5)
