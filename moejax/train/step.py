"""One jitted train step: a forward-backward schedule over the micro-batches, then the optax update."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.models.gpt import GPTModel
from moejax.moe.state import finish_step
from moejax.train.schedule import ForwardBackward, gradient_accumulation
from moejax.train.state import StatePlacement, TrainState


def make_train_step(model: GPTModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    forward_backward: ForwardBackward = gradient_accumulation,
                    placement: StatePlacement | None = None):
  """step(state, batch [num_micro, b, seq+1]) -> (state, metrics).

  Metrics are means over the micro-batches, except `tokens_per_expert` [L, E]:
  the sum over the step, which also drives the expert-bias update after the
  optimizer step (counts come from forward values, so recompute cannot count twice).

  With a `placement` (moejax.train.state), the model runs on its compute copy of the master
  params, gradients come back onto the masters' placement (a reduce-scatter with the distributed
  optimizer), and the update runs on the masters' shards in fp32; host-offloaded optimizer
  leaves visit the device for the update only.
  """
  router = model.spec.moe.router
  needs_rng = bool(router.input_jitter_eps) or router.router_force_load_balancing

  def step(state: TrainState, batch_NBS1: jax.Array):
    rng = jax.random.fold_in(jax.random.key(0), state.step) if needs_rng else None
    if placement is None:
      out = forward_backward(model, state.params, state.moe_state, batch_NBS1, rng)
      grads, opt_state = out.grads, state.opt_state
    else:
      out = forward_backward(model, placement.compute_params(state.params), state.moe_state, batch_NBS1, rng,
                             main_grads=placement.main_grads)
      grads = jax.tree.map(lambda g, p: g.astype(jnp.promote_types(p.dtype, jnp.float32)), out.grads, state.params)
      opt_state = placement.opt_state_on_device(state.opt_state)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if placement is not None:
      params = jax.lax.with_sharding_constraint(params, placement.master)
      opt_state = placement.opt_state_home(opt_state)
    moe_state = finish_step(out.moe_state, router.router_bias_update_rate)
    metrics = dict(loss=out.loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step), **out.metrics)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, moe_state=moe_state), metrics

  return step
