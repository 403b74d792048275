"""The training objective on one micro-batch, used by the train step, evaluation and replay:
LM cross-entropy (with Megatron's eod loss mask) + the MoE losses (+ the MTP loss)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.models.gpt import GPTModel
from moejax.models.mtp import roll_left
from moejax.moe.state import MOE_STATE, ROUTING_RECORD, ROUTING_REPLAY


def _loss_mask(inputs_BS, model: GPTModel):
  """1 where a position counts: with `data.eod_mask_loss`, not where the input token is eod."""
  docs = model.spec.documents
  if not docs.eod_mask_loss:
    return jnp.ones(inputs_BS.shape, jnp.float32)
  return (inputs_BS != docs.eod).astype(jnp.float32)


def _masked_ce(logits_BSV, labels_BS, keep_BS):
  ce_BS = optax.softmax_cross_entropy_with_integer_labels(logits_BSV, labels_BS)
  return jnp.sum(ce_BS * keep_BS) / jnp.maximum(jnp.sum(keep_BS), 1.0)


def lm_loss(logits_BSV, labels_BS, inputs_BS, model: GPTModel):
  """Mean token cross-entropy; with `data.eod_mask_loss`, none where the input token is eod."""
  return _masked_ce(logits_BSV, labels_BS, _loss_mask(inputs_BS, model))


def mtp_loss(mtp_logits_DBSV, labels_BS, inputs_BS, model: GPTModel):
  """Mean over the MTP depths of their cross-entropy (Megatron's): depth k predicts the label k
  places further on; labels and loss mask roll left with it, the last k positions are left out."""
  keep_BS, total = _loss_mask(inputs_BS, model), jnp.zeros((), jnp.float32)
  for k in range(mtp_logits_DBSV.shape[0]):
    labels_BS, keep_BS = roll_left(labels_BS), roll_left(keep_BS)
    total = total + _masked_ce(mtp_logits_DBSV[k], labels_BS, keep_BS)
  return total / mtp_logits_DBSV.shape[0]


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
  out, updates = model.apply(variables, inputs_BS, mtp=with_mtp,
                             rngs={"router": rng} if rng is not None else {}, mutable=mutable)
  logits_BSV, moe = out[:2]
  lm = lm_loss(logits_BSV, labels_BS, inputs_BS, model)
  extra = {}
  total = lm
  if with_mtp:
    extra["mtp_loss"] = mtp_loss(out[2], labels_BS, inputs_BS, model)
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
