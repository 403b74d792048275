"""Token dispatchers (Megatron's allgather and alltoall): dispatch() and combine().

Legend: T tokens on this device, K top-k, P = T·K (token, expert) pairs, H hidden,
E experts, E_l experts on this device, G ranks of the expert-parallel exchange,
C rows per (source, destination) rank pair in the exchange buffer, R rows of a
row buffer, N rows received by one device.

Both run inside the MoE layer's `jax.shard_map` body (moejax/moe/layer.py), on this
device's tokens. `dispatch` returns the rows of the local experts sorted by expert
(`ExpertRows`) and a handle; `combine` takes the experts' output rows and the handle
back to one output row per token.

- allgather: gather the tokens of the ep×etp group, keep the pairs routed to the
  local experts; combine reduce-scatters the partial outputs back.
- alltoall: sort the pairs by destination rank into a [G, C] buffer, exchange it
  over ep, all-gather over expert-TP, sort by local expert; combine undoes every
  step. With `exchange_capacity_factor` set, C is that factor times the even share
  T·K/G, and `overflows()` says when a rank pair does not fit (the layer then takes
  the allgather path for that step, so nothing is dropped).

The token-moving collectives come from a `Collectives` object, the one place the
exchange primitive is chosen; benchmarks pass a subclass with local stand-ins.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from moejax.moe.permute import (Placement, combine_rows, inverse_permutation, move_rows, permute, place_by_expert,
                                sort_pairs, unpermute)
from moejax.parallel.sharding import dividing_axes, mesh_axes_of


# ---------------------------------------------------------------- mesh axes
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

  @property
  def etp_gather(self):
    return tuple(a for a in self.etp if a in self.token)

  @property
  def etp_replicated(self):
    return tuple(a for a in self.etp if a not in self.token)

  @classmethod
  def current(cls, batch: int, seq: int) -> MoEAxes:
    """The axes of the current mesh and logical-axis rules; token axes that do not divide the
    batch or sequence replicate (`dividing_axes`)."""
    return cls(batch=dividing_axes("batch", batch), seq=dividing_axes("seq", seq),
               ep=mesh_axes_of("expert"), etp=mesh_axes_of("expert_mlp"))


# ---------------------------------------------------------------- collectives
def _ragged_exchange_impl(x_GCH, send_counts_G, recv_counts_G, axes):
  G, C, H = x_GCH.shape
  flat = x_GCH.reshape(G * C, H)
  me = jax.lax.axis_index(axes)
  offsets_G = jnp.arange(G, dtype=jnp.int32) * C
  out = jax.lax.ragged_all_to_all(
      flat, jnp.zeros_like(flat), offsets_G, send_counts_G.astype(jnp.int32),
      jnp.full((G,), me * C, jnp.int32), recv_counts_G.astype(jnp.int32), axis_name=axes)
  return out.reshape(G, C, H)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _ragged_exchange(x_GCH, send_counts_G, recv_counts_G, axes):
  return _ragged_exchange_impl(x_GCH, send_counts_G, recv_counts_G, axes)


def _ragged_fwd(x_GCH, send_counts_G, recv_counts_G, axes):
  return _ragged_exchange_impl(x_GCH, send_counts_G, recv_counts_G, axes), (send_counts_G, recv_counts_G)


def _ragged_bwd(axes, res, g_GCH):
  send_counts_G, recv_counts_G = res
  return _ragged_exchange_impl(g_GCH, recv_counts_G, send_counts_G, axes), None, None


_ragged_exchange.defvjp(_ragged_fwd, _ragged_bwd)


@dataclasses.dataclass(frozen=True)
class Collectives:
  """The collectives that move token rows; `exchange_primitive` is moe.token_exchange."""
  exchange_primitive: str = "all_to_all"

  def gather(self, v, axes):
    return jax.lax.all_gather(v, axes, axis=0, tiled=True)

  def scatter(self, v, axes):
    return jax.lax.psum_scatter(v, axes, scatter_dimension=0, tiled=True)

  def exchange(self, x_GCH, send_counts_G, recv_counts_G, axes: tuple[str, ...]):
    """Sends x[g, :send_counts[g]] to rank g of `axes`; returns [G, C, H] by source rank.

    all_to_all          padded `jax.lax.all_to_all` of the whole [G, C, H] buffer
    ragged_all_to_all   moves only the counted rows (GPU/TPU only)
    Rows past recv_counts[g] are zero. A device-initiated (Pallas) exchange would
    slot in here with the same signature.
    """
    if self.exchange_primitive == "all_to_all":
      G, C, H = x_GCH.shape
      return jax.lax.all_to_all(x_GCH.reshape(G * C, H), axes, 0, 0, tiled=True).reshape(G, C, H)
    if self.exchange_primitive == "ragged_all_to_all":
      return _ragged_exchange(x_GCH, send_counts_G, recv_counts_G, axes)
    raise ValueError(f"moe.token_exchange={self.exchange_primitive!r} is not an exchange primitive")


def exchange_rows_per_rank(tokens: int, topk: int, ranks: int, capacity_factor: float | None) -> int:
  """C: buffer rows per (source, destination) pair; T·K (worst case) when no factor is given."""
  worst = tokens * topk
  if capacity_factor is None:
    return worst
  return min(worst, -(-math.ceil(capacity_factor * worst / ranks) // 8) * 8)


# ---------------------------------------------------------------- dispatchers
class ExpertRows(NamedTuple):
  """What the local experts compute on: rows sorted by expert, rows past sum(group sizes) zero."""
  x_RH: jax.Array
  probs_R: jax.Array
  group_sizes_El: jax.Array


def _reduce_partials(out, collectives: Collectives, gather_axes, replicated_axes):
  """Combine's tail: reduce-scatter the rows gathered over `gather_axes`, sum over the axes
  whose devices hold the same tokens (each computed part of the experts)."""
  if gather_axes:
    out = collectives.scatter(out, gather_axes)
  if replicated_axes:
    out = jax.lax.psum(out, replicated_axes)
  return out


@dataclasses.dataclass(frozen=True)
class AllGatherTokenDispatcher:
  """Gather tokens over ep×etp, compute the local experts, reduce-scatter back."""
  axes: MoEAxes
  num_local_experts: int
  collectives: Collectives = Collectives()
  rows_per_expert: int | None = None   # expert capacity under token dropping: E_l × capacity rows

  def _gather(self, v):
    return self.collectives.gather(v, self.axes.gather) if self.axes.gather else v

  def plan(self, idx_TK, keep_TK=None) -> tuple[Placement, jax.Array]:
    """Where the group's pairs for the local experts go, and rows per local expert."""
    E_l = self.num_local_experts
    offset = jax.lax.axis_index(self.axes.ep) * E_l if self.axes.ep else 0
    bound = None if self.rows_per_expert is None else E_l * self.rows_per_expert
    return place_by_expert(self._gather(idx_TK), E_l, offset, None if keep_TK is None else self._gather(keep_TK),
                           bound)

  def dispatch(self, x_TH, probs_TK, plan):
    place, group_sizes = plan
    x_RH, probs_R = move_rows(self._gather(x_TH), self._gather(probs_TK), place)
    return ExpertRows(x_RH, probs_R, group_sizes), place

  def combine(self, y_RH, place: Placement):
    return _reduce_partials(unpermute(y_RH, place), self.collectives, self.axes.gather, self.axes.replicated)


class _ExchangePlan(NamedTuple):
  place: Placement        # pairs in the [G·C] send buffer
  counts_GL: jax.Array    # pairs per (destination rank, its local expert)
  send_G: jax.Array       # rows sent to each rank


class _ExchangeHandle(NamedTuple):
  plan: _ExchangePlan
  recv_G: jax.Array
  local: Placement        # received rows by local expert


@dataclasses.dataclass(frozen=True)
class AllToAllTokenDispatcher:
  """Exchange the routed pairs over ep (dropless), all-gather over expert-TP.

  Needs the tokens sharded over every ep axis (the layer uses allgather otherwise).
  """
  axes: MoEAxes
  num_experts: int
  num_local_experts: int
  collectives: Collectives = Collectives()
  capacity_factor: float | None = None   # moe.exchange_capacity_factor; None: worst-case buffer
  rows_per_expert: int | None = None

  @property
  def ranks(self) -> int:
    return self.num_experts // self.num_local_experts

  def bounded(self, tokens: int, topk: int) -> bool:
    """True when the buffer is smaller than the worst case, so a step may overflow it."""
    return exchange_rows_per_rank(tokens, topk, self.ranks, self.capacity_factor) < tokens * topk

  def plan(self, idx_TK, keep_TK=None) -> _ExchangePlan:
    """Sorts pairs by global expert id = (destination rank, local expert) into the [G, C] buffer."""
    T, K = idx_TK.shape
    G, E_l, E = self.ranks, self.num_local_experts, self.num_experts
    C, Pn = exchange_rows_per_rank(T, K, G, self.capacity_factor), T * K
    valid_P = jnp.ones((Pn,), bool) if keep_TK is None else keep_TK.reshape(-1)
    key_P = jnp.where(valid_P, idx_TK.reshape(-1), E)
    order_P, counts_E, _ = sort_pairs(key_P, E)
    counts_GL = counts_E.reshape(G, E_l)
    send_G = counts_GL.sum(1)
    start_G = jnp.cumsum(send_G) - send_G
    row_g, row_c = jnp.divmod(jnp.arange(G * C), C)
    row_valid = row_c < send_G[row_g]
    row_j = jnp.minimum(start_G[row_g] + row_c, Pn - 1)           # sorted position of each row
    pair_R = jnp.where(row_valid, order_P[row_j], Pn)
    sorted_dest = jnp.minimum(key_P[order_P] // E_l, G - 1)
    sorted_c = jnp.arange(Pn) - start_G[sorted_dest]
    sorted_ok = (key_P[order_P] < E) & (sorted_c < C)
    slot_P = inverse_permutation(order_P, jnp.where(sorted_ok, sorted_dest * C + sorted_c, G * C), Pn)
    return _ExchangePlan(Placement(pair_R, slot_P.reshape(T, K)), counts_GL, send_G)

  def overflows(self, plan: _ExchangePlan, mesh_axes: tuple[str, ...]):
    """Whether any device sends a rank more than C rows this step (the same flag on every device)."""
    T, K = plan.place.slot_TK.shape
    C = exchange_rows_per_rank(T, K, self.ranks, self.capacity_factor)
    flag = (plan.send_G > C).any().astype(jnp.int32)
    if mesh_axes:  # axis_index makes the flag varying on every axis, so pmax reaches all devices
      flag = jax.lax.pmax(flag + 0 * jax.lax.axis_index(mesh_axes), mesh_axes)
    return flag > 0

  def dispatch(self, x_TH, probs_TK, plan: _ExchangePlan):
    G, E_l = self.ranks, self.num_local_experts
    x_RH, probs_R = move_rows(x_TH, probs_TK, plan.place)
    C = x_RH.shape[0] // G
    x_GCH, probs_GC = x_RH.reshape(G, C, -1), probs_R.reshape(G, C)
    if G > 1:
      recv_GL = jax.lax.all_to_all(plan.counts_GL, self.axes.ep, 0, 0, tiled=True)
      recv_G = recv_GL.sum(1)
      x_GCH = self.collectives.exchange(x_GCH, plan.send_G, recv_G, self.axes.ep)
      probs_GC = jax.lax.all_to_all(probs_GC, self.axes.ep, 0, 0, tiled=True)
    else:
      recv_GL, recv_G = plan.counts_GL, plan.send_G
    # local expert of each received row (E_l on empty rows); compare_all: the default
    # searchsorted is a loop, a host round trip per iteration on GPU.
    bounds_GL = jnp.cumsum(recv_GL, axis=1)
    lexp_GC = jax.vmap(lambda b: jnp.searchsorted(b, jnp.arange(C), side="right", method="compare_all"))(bounds_GL)
    x_NH, probs_N, lexp_N = x_GCH.reshape(G * C, -1), probs_GC.reshape(-1), lexp_GC.reshape(-1)
    if self.axes.etp_gather:
      x_NH, probs_N, lexp_N = (self.collectives.gather(v, self.axes.etp_gather) for v in (x_NH, probs_N, lexp_N))
    bound = None if self.rows_per_expert is None else E_l * self.rows_per_expert
    x_RH, probs_R, group_sizes, local = permute(x_NH, probs_N[:, None], lexp_N[:, None], E_l, 0, None, bound)
    return ExpertRows(x_RH, probs_R, group_sizes), _ExchangeHandle(plan, recv_G, local)

  def combine(self, y_RH, handle: _ExchangeHandle):
    plan = handle.plan
    y_NH = _reduce_partials(unpermute(y_RH, handle.local), self.collectives, self.axes.etp_gather,
                            self.axes.etp_replicated)
    G = self.ranks
    y_GCH = y_NH.reshape(G, -1, y_NH.shape[-1])
    if G > 1:
      y_GCH = self.collectives.exchange(y_GCH, handle.recv_G, plan.send_G, self.axes.ep)
    return combine_rows(y_GCH.reshape(-1, y_GCH.shape[-1]), plan.place.slot_TK, plan.place.src_R)
