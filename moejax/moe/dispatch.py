"""Token permutation and the all-gather token dispatcher.

Legend: T tokens on this device, K top-k, M = T_group·K routed rows, H hidden,
E_l experts on this device. The dispatcher runs under `jax.shard_map` over the
whole mesh: it gathers the tokens of its expert-parallel (and expert-TP) group,
keeps the rows routed to its local experts, runs the expert function and
reduce-scatters the combined result back (Megatron's allgather dispatcher).
Without a mesh the same code runs on one device with no collectives.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from moejax.parallel.sharding import current_mesh


def permute(x_TH, probs_TK, idx_TK, num_local_experts: int, expert_offset):
  """Sorts the (token, expert) rows by local expert; rows for other experts go last.

  Returns x_MH (sorted rows), probs_M (0 on rows not routed here), group_sizes,
  and the sort order needed by `unpermute`.
  """
  T, K = idx_TK.shape
  local_M = idx_TK.reshape(-1) - expert_offset
  valid_M = (local_M >= 0) & (local_M < num_local_experts)
  key_M = jnp.where(valid_M, local_M, num_local_experts)
  order_M = jnp.argsort(key_M, stable=True)
  group_sizes = jnp.bincount(key_M, length=num_local_experts + 1)[:num_local_experts]
  x_MH = jnp.take(x_TH, order_M // K, axis=0)
  probs_M = jnp.where(valid_M, probs_TK.reshape(-1), 0.0)[order_M]
  return x_MH, probs_M, group_sizes.astype(jnp.int32), order_M


def unpermute(y_MH, order_M, num_tokens: int, topk: int):
  """Inverse of `permute`: puts rows back in (token, k) order and sums over k."""
  inv_M = jnp.zeros_like(order_M).at[order_M].set(jnp.arange(order_M.shape[0], dtype=order_M.dtype))
  return jnp.take(y_MH, inv_M, axis=0).reshape(num_tokens, topk, -1).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class MoEAxes:
  """Mesh axes as the MoE layer sees them (all tuples may be empty)."""
  batch: tuple[str, ...] = ()
  seq: tuple[str, ...] = ()
  ep: tuple[str, ...] = ()
  etp: tuple[str, ...] = ()

  @property
  def token(self):
    return self.batch + self.seq

  @property
  def gather(self):
    """Axes whose tokens one expert-parallel group pools together."""
    return tuple(a for a in self.token if a in self.ep + self.etp)

  @property
  def replicated(self):
    """Expert axes over which tokens are already replicated (partial sums to add)."""
    return tuple(a for a in self.ep + self.etp if a not in self.token)


def _names(logical: str) -> tuple[str, ...]:
  (spec,) = nn.logical_to_mesh_axes((logical,))
  if spec is None:
    return ()
  return tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)


def current_moe_axes() -> MoEAxes:
  return MoEAxes(batch=_names("batch"), seq=_names("seq"), ep=_names("expert"), etp=_names("expert_mlp"))


def _spec(axes):
  return axes if axes else None


class AllGatherTokenDispatcher:
  """Gather tokens over ep×etp, compute local experts, reduce-scatter back."""

  def __init__(self, num_experts: int, topk: int):
    self.num_experts = num_experts
    self.topk = topk

  def __call__(self, x_BSH, probs_BSK, idx_BSK, expert_fn: Callable, expert_weights: tuple,
               weight_specs: tuple) -> jax.Array:
    """Runs dispatch → expert_fn(x_MH, group_sizes, probs_M, *weights) → combine."""
    mesh = current_mesh()
    axes = current_moe_axes() if mesh is not None else MoEAxes()

    def body(x_BSH, probs_BSK, idx_BSK, *weights):
      B, S, H = x_BSH.shape
      x_TH, probs_TK, idx_TK = x_BSH.reshape(B * S, H), probs_BSK.reshape(B * S, -1), idx_BSK.reshape(B * S, -1)
      x_TH, probs_TK, idx_TK = (self._gather(v, axes) for v in (x_TH, probs_TK, idx_TK))
      num_local = weights[0].shape[0]
      offset = jax.lax.axis_index(axes.ep) * num_local if axes.ep else 0
      x_MH, probs_M, group_sizes, order_M = permute(x_TH, probs_TK, idx_TK, num_local, offset)
      y_MH = expert_fn(x_MH, group_sizes, probs_M, *weights)
      out_TH = unpermute(y_MH, order_M, x_TH.shape[0], self.topk)
      if axes.gather:
        out_TH = jax.lax.psum_scatter(out_TH, axes.gather, scatter_dimension=0, tiled=True)
      if axes.replicated:
        out_TH = jax.lax.psum(out_TH, axes.replicated)
      return out_TH.reshape(B, S, H).astype(x_BSH.dtype)

    if mesh is None:
      return body(x_BSH, probs_BSK, idx_BSK, *expert_weights)
    tok = P(_spec(axes.batch), _spec(axes.seq), None)
    return jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, *weight_specs), out_specs=tok)(
        x_BSH, probs_BSK, idx_BSK, *expert_weights)

  @staticmethod
  def _gather(v, axes: MoEAxes):
    return jax.lax.all_gather(v, axes.gather, axis=0, tiled=True) if axes.gather else v
