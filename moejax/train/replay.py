"""Router replay (Megatron-Core's RouterReplay): record the experts every MoE layer
chose in a step, save them, and force the same choice in a later forward pass.

Used for RL (recompute log-probs with the rollout's routing) and for debugging.
The ids live in two variable collections read/written by `TopKRouter`:
`routing_record` (written when mutable) and `routing_replay` (read when given);
both are scanned with the layers, so a tree holds, per segment of the decoder,
int32 ids [repeats, tokens, K] (per layer [tokens, K] with `model.scan_layers=False`).
A step's file stacks its micro-batches first: [num_micro, repeats, tokens, K]. As in Megatron, replay replaces only the
top-k selection: the weights are the scores of the replayed experts.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from moejax.train.loss import loss_fn


def save(path: str, ids) -> None:
  """Writes an ids tree to an .npz (keys are '/'-joined module paths)."""
  flat = traverse_util.flatten_dict(jax.device_get(ids), sep="/")
  np.savez(path, **{k: np.asarray(v) for k, v in flat.items()})


def load(path: str):
  with np.load(path) as f:
    return traverse_util.unflatten_dict({k: jnp.asarray(f[k]) for k in f.files}, sep="/")


def record_step(model, params, batch_NBS1, moe_state=None, path: str | None = None):
  """Forward pass over a step's micro-batches recording the routing; returns (mean loss, ids)."""
  def micro(_, tokens_BS1):
    loss, (metrics, _) = loss_fn(model, params, tokens_BS1, moe_state, record=True)
    return None, (loss, metrics["routing_ids"])

  _, (loss_N, ids) = jax.lax.scan(micro, None, batch_NBS1)
  if path is not None:
    save(path, ids)
  return loss_N.mean(), ids


def replay_step(model, params, batch_NBS1, ids, moe_state=None):
  """Mean loss over the micro-batches with the routing forced to `ids` (a tree or an .npz path)."""
  if isinstance(ids, str):
    ids = load(ids)

  def micro(_, inp):
    tokens_BS1, ids_n = inp
    return None, loss_fn(model, params, tokens_BS1, moe_state, replay_ids=ids_n)[0]

  _, loss_N = jax.lax.scan(micro, None, (batch_NBS1, ids))
  return loss_N.mean()
