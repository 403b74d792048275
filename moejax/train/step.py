"""One jitted train step: micro-batch gradient accumulation, then the optax update."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.models.gpt import GPTModel
from moejax.moe.router import finish_step
from moejax.train.state import TrainState


def moe_loss_fn(model: GPTModel, params, tokens_BS1: jax.Array, moe_state=None, rng=None,
                replay_ids=None, record: bool = False):
  """LM cross-entropy + the MoE losses on one micro-batch [b, seq+1].

  Returns (loss, (metrics, moe_state after this micro-batch)); `rng` feeds the
  router's 'router' stream (input jitter, forced balancing). Router replay
  (moejax/moe/replay.py): `replay_ids` forces the experts of every layer and
  `record=True` returns the chosen ones as metrics['routing_ids'].
  """
  inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
  variables = {"params": params, **({"moe_state": moe_state} if moe_state else {})}
  if replay_ids is not None:
    variables["routing_replay"] = replay_ids
  mutable = ["moe_state"] + (["routing_record"] if record else [])
  (logits_BSV, moe), updates = model.apply(variables, inputs_BS, rngs={"router": rng} if rng is not None else {},
                                           mutable=mutable)
  ce_BS = optax.softmax_cross_entropy_with_integer_labels(logits_BSV, labels_BS)
  if model.spec.eod_mask_loss:  # Megatron: no loss where the input token is end-of-document
    keep_BS = (inputs_BS != model.spec.eod_token).astype(ce_BS.dtype)
    lm = jnp.sum(ce_BS * keep_BS) / jnp.maximum(jnp.sum(keep_BS), 1.0)
  else:
    lm = ce_BS.mean()
  if moe is None:
    zero = jnp.zeros(())
    metrics = dict(lm_loss=lm, aux_loss=zero, z_loss=zero, tokens_per_expert=jnp.zeros((0, 0)))
    return lm, (metrics, dict(updates.get("moe_state", moe_state or {})))
  aux, z = jnp.sum(moe.aux_loss), jnp.sum(moe.z_loss)
  metrics = dict(lm_loss=lm, aux_loss=aux, z_loss=z, tokens_per_expert=moe.tokens_per_expert_E,
                 moe_dropped_fraction=moe.dropped_fraction, moe_losses=moe.logs)
  if record:
    metrics["routing_ids"] = updates["routing_record"]
  return lm + aux + z, (metrics, dict(updates.get("moe_state", moe_state or {})))


def loss_fn(model: GPTModel, params, tokens_BS1: jax.Array, moe_state=None):
  """(loss, metrics) on one micro-batch; `moe_state` is needed when the router has expert bias."""
  loss, (metrics, _) = moe_loss_fn(model, params, tokens_BS1, moe_state)
  return loss, metrics


def make_train_step(model: GPTModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule):
  """step(state, batch [num_micro, b, seq+1]) -> (state, metrics).

  Metrics are means over the micro-batches, except `tokens_per_expert` [L, E]:
  the sum over the step, which also drives the expert-bias update after the
  optimizer step (counts come from forward values, so recompute cannot count twice).
  """
  s = model.spec
  needs_rng = bool(s.input_jitter_eps) or s.router_force_load_balancing
  grad_fn = jax.value_and_grad(lambda p, m, t, r: moe_loss_fn(model, p, t, m, r), has_aux=True)

  def step(state: TrainState, batch_NBS1: jax.Array):
    n = batch_NBS1.shape[0]
    base = jax.random.fold_in(jax.random.key(0), state.step) if needs_rng else None
    moe_state0 = state.moe_state or {}

    def micro(carry, inp):
      acc, moe_state = carry
      i, tokens_BS1 = inp
      rng = jax.random.fold_in(base, i) if needs_rng else None
      (loss, (aux, moe_state)), grads = grad_fn(state.params, moe_state, tokens_BS1, rng)
      return (jax.tree.map(jnp.add, acc, (loss, aux, grads)), moe_state), None

    (_, (aux0, _)), grads0 = jax.eval_shape(grad_fn, state.params, moe_state0, batch_NBS1[0],
                                            base if needs_rng else None)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                         (jax.ShapeDtypeStruct((), jnp.float32), aux0, grads0))
    (acc, moe_state), _ = jax.lax.scan(micro, (zeros, moe_state0), (jnp.arange(n), batch_NBS1))
    loss, aux, grads = jax.tree.map(lambda v: v / n, acc)
    aux["tokens_per_expert"] = acc[1]["tokens_per_expert"]  # summed over the step
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    moe_state = finish_step(moe_state, s.router_bias_update_rate)
    metrics = dict(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step), **aux)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state, moe_state=moe_state), metrics

  return step
