"""Forward-backward schedules (moejax/train/schedule.py): gradient accumulation against jax.grad
of the loss, one micro-batch at a time."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.train.loss import loss_fn
from moejax.train.schedule import compute_params, gradient_accumulation


@functools.partial(jax.jit, static_argnums=0)  # compiled once for every micro-batch count
def _micro_batch_grad(model, params, tokens, moe_state):
  return jax.value_and_grad(lambda p: loss_fn(model, p, tokens, moe_state), has_aux=True)(params)


def _reference(model, params, moe_state, tokens_NBS1):
  """Mean loss and gradients over the micro-batches, each by jax.grad of loss_fn (the MoE state
  threaded through in order)."""
  compute = compute_params(params, model.spec.dtype)
  losses, grads = [], []
  for tokens in tokens_NBS1:
    (loss, (_, moe_state)), g = _micro_batch_grad(model, compute, tokens, moe_state)
    losses.append(loss)
    grads.append(g)
  return jnp.mean(jnp.stack(losses)), jax.tree.map(lambda *g: sum(g) / len(g), *grads)


def test_gradient_accumulation_matches_jax_grad(small_moe_config, single_device_setup, small_moe_tokens):
  cfg = small_moe_config(router_load_balancing_type="aux_loss", aux_loss_coeff=1e-2)
  layout, rules, model, _, _, state, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    for n in (1, 2):  # one micro-batch: gradients written out for the optimizer; two: summed in a scan
      tokens = small_moe_tokens[:n]
      out = jax.jit(lambda p, m, t: gradient_accumulation(model, p, m, t))(state.params, state.moe_state, tokens)
      ref_loss, ref_grads = _reference(model, state.params, state.moe_state, tokens)
      np.testing.assert_allclose(out.loss, ref_loss, rtol=1e-6)
      for g, r in zip(jax.tree.leaves(out.grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=1e-7)


def test_one_micro_batch_writes_each_gradient_out_once(small_moe_config, single_device_setup, small_moe_tokens):
  """Each gradient leaf goes through its own optimization barrier before the update reads it, so
  an unrolled layer stack's gradient is one buffer, not a concatenation fused into every AdamW
  output (benchmarks/RESULTS.md, issue 18)."""
  cfg = small_moe_config()
  cfg.model.scan_unroll = 0
  layout, rules, model, _, _, state, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    jaxpr = jax.make_jaxpr(lambda p, m, t: gradient_accumulation(model, p, m, t).grads)(
        state.params, state.moe_state, small_moe_tokens[:1])
  barriers = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "optimization_barrier"]
  assert len(barriers) == len(jax.tree.leaves(state.params))
  assert all(len(e.invars) == 1 for e in barriers)


@pytest.mark.parametrize("moe", [{}, dict(router_score_function="sigmoid", router_enable_expert_bias=True,
                                          input_jitter_eps=0.01)], ids=["plain", "expert_bias_and_rng"])
def test_micro_batches_trace_the_loss_once(small_moe_config, single_device_setup, small_moe_tokens, monkeypatch,
                                           moe):
  """The accumulators' shapes come from the same trace of forward+backward as the scan body
  (grad_fn is jitted, so eval_shape's trace is reused): one trace of the model per step build, also
  with the MoE state carried (expert bias) and a random key per micro-batch (jitter)."""
  import moejax.train.schedule as schedule
  traced = []
  monkeypatch.setattr(schedule, "loss_fn", lambda *a, **k: traced.append(1) or loss_fn(*a, **k))
  layout, rules, model, _, _, state, _, _ = single_device_setup(small_moe_config(**moe))
  assert bool(state.moe_state) == bool(moe)
  rng = jax.random.key(3) if moe else None
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    jax.make_jaxpr(lambda p, m, t: gradient_accumulation(model, p, m, t, rng).loss)(state.params, state.moe_state,
                                                                                   small_moe_tokens)
  assert len(traced) == 1
