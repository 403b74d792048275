"""One jitted train step: micro-batch gradient accumulation, then the optax update."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.models.gpt import GPTModel
from moejax.train.state import TrainState


def loss_fn(model: GPTModel, params, tokens_BS1: jax.Array):
  """LM cross-entropy + the MoE losses on one micro-batch [b, seq+1]."""
  inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
  logits_BSV, moe = model.apply({"params": params}, inputs_BS)
  lm = optax.softmax_cross_entropy_with_integer_labels(logits_BSV, labels_BS).mean()
  aux = jnp.sum(moe.aux_loss) if moe is not None else jnp.zeros(())
  z = jnp.sum(moe.z_loss) if moe is not None else jnp.zeros(())
  tokens_per_expert = moe.tokens_per_expert_E if moe is not None else jnp.zeros((0, 0))
  return lm + aux + z, dict(lm_loss=lm, aux_loss=aux, z_loss=z, tokens_per_expert=tokens_per_expert)


def make_train_step(model: GPTModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule):
  """step(state, batch [num_micro, b, seq+1]) -> (state, metrics); the mean over micro-batches."""
  grad_fn = jax.value_and_grad(lambda p, t: loss_fn(model, p, t), has_aux=True)

  def step(state: TrainState, batch_NBS1: jax.Array):
    n = batch_NBS1.shape[0]

    def micro(acc, tokens_BS1):
      (loss, aux), grads = grad_fn(state.params, tokens_BS1)
      return jax.tree.map(jnp.add, acc, (loss, aux, grads)), None

    (_, aux0), grads0 = jax.eval_shape(grad_fn, state.params, batch_NBS1[0])
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (jax.ShapeDtypeStruct((), jnp.float32), aux0, grads0))
    (loss, aux, grads), _ = jax.lax.scan(micro, zeros, batch_NBS1)
    loss, aux, grads = jax.tree.map(lambda v: v / n, (loss, aux, grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), lr=schedule(state.step), **aux)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step
