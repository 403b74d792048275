"""The training objective on one micro-batch, used by the train step, evaluation and replay:
LM cross-entropy (with Megatron's eod loss mask) + the MoE losses (+ the MTP loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.layers.dropout import step_rngs
from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE, ROUTING_RECORD, ROUTING_REPLAY


def token_weights(inputs_BS, model: GPTModel, loss_tokens=None):
  """Per-token weights of the LM loss; with `data.eod_mask_loss`, none where the input token is eod.
  They sum to 1 over the micro-batch, or with `loss_tokens` (`step_loss_tokens`) are 1 / loss_tokens each."""
  docs = model.spec.documents
  if not docs.eod_mask_loss:
    return jnp.full(inputs_BS.shape, 1.0 / inputs_BS.size, jnp.float32)
  keep_BS = (inputs_BS != docs.eod).astype(jnp.float32)
  return keep_BS / (jnp.maximum(jnp.sum(keep_BS), 1.0) if loss_tokens is None else loss_tokens)


def step_loss_tokens(model: GPTModel, batch_NBS1):
  """With train.calculate_per_token_loss and data.eod_mask_loss: the step's loss tokens over its number of
  micro-batches, so that the mean over the micro-batches of Σ weights · loss is Megatron's per-token loss
  (the step's summed loss over its loss-token count); else None (the per-micro-batch mean is the same)."""
  spec = model.spec
  if not (spec.loss.calculate_per_token_loss and spec.documents.eod_mask_loss):
    return None
  keep = jnp.sum(batch_NBS1[:, :, :-1] != spec.documents.eod, dtype=jnp.float32)
  return jnp.maximum(keep, 1.0) / batch_NBS1.shape[0]


def moe_loss_scale(inputs_BS, loss_tokens):
  """The weight of a micro-batch's aux and z losses: 1, or with per-token loss its tokens over `loss_tokens`
  (Megatron scales them by the micro-batch's tokens before dividing every gradient by the loss tokens)."""
  return 1.0 if loss_tokens is None else inputs_BS.size / loss_tokens


def loss_fn(model: GPTModel, params, tokens_BS1: jax.Array, moe_state=None, rng=None, replay_ids=None,
            record: bool = False, loss_tokens=None):
  """LM cross-entropy + the MoE losses (+ model.mtp_loss_scaling_factor · MTP loss) on one
  micro-batch [b, seq+1].

  Returns (loss, (metrics, moe_state after this micro-batch)); `rng` feeds the
  router's 'router' stream (input jitter, forced balancing). Router replay
  (moejax/train/replay.py): `replay_ids` forces the experts of every layer and
  `record=True` returns the chosen ones as metrics['routing_ids']. With MTP the metrics carry
  `mtp_loss` (unscaled, mean over depths) besides `lm_loss`. `loss_tokens` (`step_loss_tokens`) makes
  it a share of Megatron's per-token loss of the step.
  """
  inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
  variables = {"params": params, **({MOE_STATE: moe_state} if moe_state else {})}
  if replay_ids is not None:
    variables[ROUTING_REPLAY] = replay_ids
  mutable = [MOE_STATE] + ([ROUTING_RECORD] if record else [])
  with_mtp = model.spec.mtp_num_layers > 0
  out, updates = model.apply(variables, inputs_BS, labels_BS=labels_BS,
                             loss_weights_BS=token_weights(inputs_BS, model, loss_tokens), mtp=with_mtp,
                             rngs=step_rngs(rng), mutable=mutable)
  lm, moe = out[:2]
  extra = {}
  total = lm
  if with_mtp:  # Megatron's MTP loss: the mean over the depths, scaled
    extra["mtp_loss"] = jnp.mean(out[2])
    total = total + model.spec.mtp_loss_scaling_factor * extra["mtp_loss"]
  moe_state = dict(updates.get(MOE_STATE, moe_state or {}))
  if moe is None:
    zero = jnp.zeros(())
    metrics = dict(lm_loss=lm, aux_loss=zero, z_loss=zero, tokens_per_expert=jnp.zeros((0, 0)), **extra)
    return total, (metrics, moe_state)
  aux, z = jnp.sum(moe.aux_loss), jnp.sum(moe.z_loss)
  metrics = dict(lm_loss=lm, aux_loss=aux, z_loss=z, tokens_per_expert=moe.tokens_per_expert_E,
                 moe_dropped_fraction=moe.dropped_fraction, moe_losses=moe.logs, **extra)
  if record:
    metrics["routing_ids"] = updates[ROUTING_RECORD]
  return total + (aux + z) * moe_loss_scale(inputs_BS, loss_tokens), (metrics, moe_state)
