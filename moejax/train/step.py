"""One jitted train step: a forward-backward schedule over the micro-batches, then the optax update."""
from __future__ import annotations

import jax
import optax

from moejax.models.gpt import GPTModel
from moejax.moe.state import finish_step
from moejax.train.schedule import ForwardBackward, gradient_accumulation
from moejax.train.state import TrainState


def make_train_step(model: GPTModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    forward_backward: ForwardBackward = gradient_accumulation):
  """step(state, batch [num_micro, b, seq+1]) -> (state, metrics).

  Metrics are means over the micro-batches, except `tokens_per_expert` [L, E]:
  the sum over the step, which also drives the expert-bias update after the
  optimizer step (counts come from forward values, so recompute cannot count twice).
  """
  router = model.spec.moe.router
  needs_rng = bool(router.input_jitter_eps) or router.router_force_load_balancing

  def step(state: TrainState, batch_NBS1: jax.Array):
    rng = jax.random.fold_in(jax.random.key(0), state.step) if needs_rng else None
    out = forward_backward(model, state.params, state.moe_state, batch_NBS1, rng)
    updates, opt_state = optimizer.update(out.grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    moe_state = finish_step(out.moe_state, router.router_bias_update_rate)
    metrics = dict(loss=out.loss, grad_norm=optax.tree.norm(out.grads), lr=schedule(state.step), **out.metrics)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, moe_state=moe_state), metrics

  return step
