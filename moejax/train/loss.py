"""The training objective on one micro-batch, used by the train step, evaluation and replay:
LM cross-entropy (with Megatron's eod loss mask) + the MoE losses (+ the MTP loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE, ROUTING_RECORD, ROUTING_REPLAY


def token_weights(inputs_BS, model: GPTModel):
  """Per-token weights of the mean LM loss; with `data.eod_mask_loss`, none where the input token is eod."""
  docs = model.spec.documents
  if not docs.eod_mask_loss:
    return jnp.full(inputs_BS.shape, 1.0 / inputs_BS.size, jnp.float32)
  keep_BS = (inputs_BS != docs.eod).astype(jnp.float32)
  return keep_BS / jnp.maximum(jnp.sum(keep_BS), 1.0)


def loss_fn(model: GPTModel, params, tokens_BS1: jax.Array, moe_state=None, rng=None, replay_ids=None,
            record: bool = False):
  """LM cross-entropy + the MoE losses (+ model.mtp_loss_scaling_factor · MTP loss) on one
  micro-batch [b, seq+1].

  Returns (loss, (metrics, moe_state after this micro-batch)); `rng` feeds the
  router's 'router' stream (input jitter, forced balancing). Router replay
  (moejax/train/replay.py): `replay_ids` forces the experts of every layer and
  `record=True` returns the chosen ones as metrics['routing_ids']. With MTP the metrics carry
  `mtp_loss` (unscaled, mean over depths) besides `lm_loss`.
  """
  inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
  variables = {"params": params, **({MOE_STATE: moe_state} if moe_state else {})}
  if replay_ids is not None:
    variables[ROUTING_REPLAY] = replay_ids
  mutable = [MOE_STATE] + ([ROUTING_RECORD] if record else [])
  with_mtp = model.spec.mtp_num_layers > 0
  out, updates = model.apply(variables, inputs_BS, labels_BS=labels_BS, loss_weights_BS=token_weights(inputs_BS, model),
                             mtp=with_mtp, rngs={"router": rng} if rng is not None else {}, mutable=mutable)
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
  return total + aux + z, (metrics, moe_state)
