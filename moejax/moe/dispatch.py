"""Token permutation and the token dispatchers (Megatron's allgather and alltoall).

Legend: T tokens on this device, K top-k, P = T·K (token, expert) pairs, H hidden,
E experts, E_l experts on this device, G ranks of the expert-parallel exchange,
C rows per (source, destination) rank pair in the exchange buffer, R rows of a
row buffer, N rows received by one device.

Both dispatchers run under `jax.shard_map` over the whole mesh and call
`expert_fn(x_RH, group_sizes_El, probs_R, *weights)` on rows sorted by local
expert (rows past `sum(group_sizes)` are zero and must map to zero).

- allgather: gather the tokens of the ep×etp group, keep the pairs routed to the
  local experts, run them, reduce-scatter the partial outputs back.
- alltoall: sort the pairs by destination rank into a [G, C] buffer, exchange
  it over ep (padded `all_to_all` or `ragged_all_to_all`, see `exchange`),
  all-gather over expert-TP, run the local experts, and undo every step. With
  `exchange_capacity_factor` set, C is that factor times the even share
  T·K/G; if any rank pair overflows C in a step, the whole layer takes the
  allgather path for that step (`lax.cond`, same result), so nothing is dropped.

Row movement uses one pair of gathers, `dispatch_rows`/`combine_rows`, each the
other's transpose, so neither direction of autodiff scatter-adds rows.
Without a mesh the same code runs on one device with no collectives.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from moejax.parallel.sharding import current_mesh

DISPATCHERS = ("allgather", "alltoall")
EXCHANGES = ("all_to_all", "ragged_all_to_all")


# ---------------------------------------------------------------- row movement
def _take(x, idx):
  """x[idx] along axis 0; out-of-range indices (== len) give zero rows."""
  return jnp.take(x, idx, axis=0, mode="fill", fill_value=0)


@jax.custom_vjp
def dispatch_rows(x_TH, src_R, slot_TK):
  """out[r] = x[src[r]] (zero where src[r] == T).

  `slot_TK[t, k]` is the row holding pair (t, k), or R if the pair has no row;
  src and slot must describe the same placement. The gradient is the gather
  dx[t] = sum_k g[slot[t, k]].
  """
  return _take(x_TH, src_R)


def _dispatch_fwd(x_TH, src_R, slot_TK):
  return _take(x_TH, src_R), (src_R, slot_TK)


def _dispatch_bwd(res, g_RH):
  src_R, slot_TK = res
  return _take(g_RH, slot_TK).sum(1, dtype=jnp.float32).astype(g_RH.dtype), None, None


dispatch_rows.defvjp(_dispatch_fwd, _dispatch_bwd)


@jax.custom_vjp
def combine_rows(y_RH, slot_TK, src_R):
  """out[t] = sum_k y[slot[t, k]] (the transpose of `dispatch_rows`), summed in fp32."""
  return _take(y_RH, slot_TK).sum(1, dtype=jnp.float32).astype(y_RH.dtype)


def _combine_fwd(y_RH, slot_TK, src_R):
  return combine_rows(y_RH, slot_TK, src_R), (slot_TK, src_R)


def _combine_bwd(res, g_TH):
  slot_TK, src_R = res
  return _take(g_TH, src_R), None, None


combine_rows.defvjp(_combine_fwd, _combine_bwd)


def _inverse(order, values, size):
  """out[order[j]] = values[j] (an integer scatter of a permutation; no gradient)."""
  return jnp.zeros((size,), values.dtype).at[order].set(values, unique_indices=True)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where each (token, k) pair sits in a row buffer of R rows (R = no row)."""
  src_R: jax.Array         # token of each row, T for empty rows
  slot_TK: jax.Array       # row of each pair, R for pairs without a row
  probs_R: jax.Array       # routing prob of each row, 0 for empty rows


def sort_pairs(key_P, num_keys: int):
  """Stable sort of the pairs by key (key == num_keys: pair has no row).

  Returns (sorted order, counts per key [num_keys], valid mask of sorted rows).
  """
  order_P = jnp.argsort(key_P, stable=True)
  counts = jnp.bincount(key_P, length=num_keys + 1)[:num_keys].astype(jnp.int32)
  valid_P = jnp.arange(key_P.shape[0]) < counts.sum()
  return order_P, counts, valid_P


def permute(x_TH, probs_TK, idx_TK, num_local_experts: int, expert_offset, keep_TK=None,
            num_rows: int | None = None):
  """Sorts the (token, expert) pairs by local expert; other pairs get zero rows at the end.

  Returns x_RH (R = T·K rows, or `num_rows` if smaller: a bound on the kept
  pairs, e.g. E_l × expert capacity when tokens are dropped), probs_R (0 on
  empty rows), group_sizes [E_l] and the `Placement` that `unpermute` inverts.
  """
  T, K = idx_TK.shape
  local_P = idx_TK.reshape(-1) - expert_offset
  valid_P = (local_P >= 0) & (local_P < num_local_experts)
  if keep_TK is not None:
    valid_P &= keep_TK.reshape(-1)
  key_P = jnp.where(valid_P, local_P, num_local_experts)
  order_P, group_sizes, row_valid_P = sort_pairs(key_P, num_local_experts)
  Pn = T * K
  R = Pn if num_rows is None else min(Pn, num_rows)
  order_R, row_valid_R = order_P[:R], row_valid_P[:R]
  src_R = jnp.where(row_valid_R, order_R // K, T)
  pos_P = jnp.arange(Pn)
  slot_P = _inverse(order_P, jnp.where(row_valid_P & (pos_P < R), pos_P, R), Pn)
  probs_R = jnp.where(row_valid_R, _take(probs_TK.reshape(-1), order_R), 0)
  place = Placement(src_R, slot_P.reshape(T, K), probs_R)
  return dispatch_rows(x_TH, src_R, place.slot_TK), probs_R, group_sizes, place


def unpermute(y_RH, place: Placement):
  """Inverse of `permute`: each token sums its rows (the probs were applied in the experts)."""
  return combine_rows(y_RH, place.slot_TK, place.src_R)


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


def _names(logical: str) -> tuple[str, ...]:
  (spec,) = nn.logical_to_mesh_axes((logical,))
  if spec is None:
    return ()
  return tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)


def current_moe_axes() -> MoEAxes:
  return MoEAxes(batch=_names("batch"), seq=_names("seq"), ep=_names("expert"), etp=_names("expert_mlp"))


def _size(mesh, axes) -> int:
  return math.prod(mesh.shape[a] for a in axes)


def _fit_token_axes(mesh, axes: MoEAxes, B: int, S: int) -> MoEAxes:
  """Token axes that do not divide the batch/seq (e.g. `model.init` on one sequence) replicate."""
  batch = axes.batch if B % _size(mesh, axes.batch) == 0 else ()
  seq = axes.seq if S % _size(mesh, axes.seq) == 0 else ()
  return dataclasses.replace(axes, batch=batch, seq=seq)


def _spec(axes):
  return axes if axes else None


# ---------------------------------------------------------------- collectives
# The token-moving collectives are module functions looked up at trace time, so
# benchmarks/moe_layer.py can swap in local stand-ins to time compute alone.
def gather_tokens(v, axes):
  return jax.lax.all_gather(v, axes, axis=0, tiled=True)


def scatter_tokens(v, axes):
  return jax.lax.psum_scatter(v, axes, scatter_dimension=0, tiled=True)


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


def exchange(x_GCH, send_counts_G, recv_counts_G, axes: tuple[str, ...], primitive: str):
  """Sends x[g, :send_counts[g]] to rank g of `axes`; returns [G, C, H] by source rank.

  The one place the exchange primitive is chosen:
    all_to_all          padded `jax.lax.all_to_all` of the whole [G, C, H] buffer
    ragged_all_to_all   moves only the counted rows (GPU/TPU only)
  Rows past recv_counts[g] are zero. A device-initiated (Pallas) exchange would
  slot in here with the same signature.
  """
  if primitive == "all_to_all":
    G, C, H = x_GCH.shape
    return jax.lax.all_to_all(x_GCH.reshape(G * C, H), axes, 0, 0, tiled=True).reshape(G, C, H)
  if primitive == "ragged_all_to_all":
    return _ragged_exchange(x_GCH, send_counts_G, recv_counts_G, axes)
  raise ValueError(f"moe.token_exchange={primitive!r} must be one of {EXCHANGES}")


def exchange_rows_per_rank(tokens: int, topk: int, ranks: int, capacity_factor: float | None) -> int:
  """C: buffer rows per (source, destination) pair; T·K (worst case) when no factor is given."""
  worst = tokens * topk
  if capacity_factor is None:
    return worst
  return min(worst, -(-math.ceil(capacity_factor * worst / ranks) // 8) * 8)


# ---------------------------------------------------------------- dispatchers
def _allgather_body(axes: MoEAxes, topk: int, expert_fn: Callable, rows_per_expert: int | None = None):
  def body(x_TH, probs_TK, idx_TK, keep_TK, *weights):
    gather = lambda v: gather_tokens(v, axes.gather) if axes.gather else v
    x_TH, probs_TK, idx_TK = gather(x_TH), gather(probs_TK), gather(idx_TK)
    keep_TK = None if keep_TK is None else gather(keep_TK)
    num_local = weights[0].shape[0]
    offset = jax.lax.axis_index(axes.ep) * num_local if axes.ep else 0
    bound = None if rows_per_expert is None else num_local * rows_per_expert
    x_RH, probs_R, group_sizes, place = permute(x_TH, probs_TK, idx_TK, num_local, offset, keep_TK, bound)
    out_TH = unpermute(expert_fn(x_RH, group_sizes, probs_R, *weights), place)
    if axes.gather:
      out_TH = scatter_tokens(out_TH, axes.gather)
    if axes.replicated:
      out_TH = jax.lax.psum(out_TH, axes.replicated)
    return out_TH
  return body


def _alltoall_body(axes: MoEAxes, topk: int, num_experts: int, expert_fn: Callable, primitive: str,
                   capacity_factor: float | None, mesh_axes: tuple[str, ...], fallback: Callable,
                   rows_per_expert: int | None = None):
  def body(x_TH, probs_TK, idx_TK, keep_TK, *weights):
    T, K = idx_TK.shape
    E_l = weights[0].shape[0]
    G = num_experts // E_l
    C = exchange_rows_per_rank(T, K, G, capacity_factor)
    Pn = T * K
    # 1. sort pairs by global expert id = (destination rank, local expert); [G, C] send buffer.
    valid_P = jnp.ones((Pn,), bool) if keep_TK is None else keep_TK.reshape(-1)
    key_P = jnp.where(valid_P, idx_TK.reshape(-1), num_experts)
    order_P, counts_E, _ = sort_pairs(key_P, num_experts)
    counts_GL = counts_E.reshape(G, E_l)
    send_G = counts_GL.sum(1)
    start_G = jnp.cumsum(send_G) - send_G
    row_g, row_c = jnp.divmod(jnp.arange(G * C), C)
    row_valid = row_c < send_G[row_g]
    row_j = jnp.minimum(start_G[row_g] + row_c, Pn - 1)           # sorted position of each row
    src_R = jnp.where(row_valid, order_P[row_j] // K, T)
    probs_R = jnp.where(row_valid, probs_TK.reshape(-1)[order_P[row_j]], 0)
    sorted_dest = jnp.minimum(key_P[order_P] // E_l, G - 1)
    sorted_c = jnp.arange(Pn) - start_G[sorted_dest]
    sorted_ok = (key_P[order_P] < num_experts) & (sorted_c < C)
    slot_P = _inverse(order_P, jnp.where(sorted_ok, sorted_dest * C + sorted_c, G * C), Pn)
    slot_TK = slot_P.reshape(T, K)

    def main(x_TH, probs_TK, probs_R, keep_TK, *weights):
      x_GCH = dispatch_rows(x_TH, src_R, slot_TK).reshape(G, C, -1)
      if G > 1:
        recv_GL = jax.lax.all_to_all(counts_GL, axes.ep, 0, 0, tiled=True)
        recv_G = recv_GL.sum(1)
        x_GCH = exchange(x_GCH, send_G, recv_G, axes.ep, primitive)
        probs_GC = jax.lax.all_to_all(probs_R.reshape(G, C), axes.ep, 0, 0, tiled=True)
      else:
        recv_GL, recv_G, probs_GC = counts_GL, send_G, probs_R.reshape(G, C)
      # 2. local expert of each received row (E_l on empty rows), then expert-TP gather.
      bounds_GL = jnp.cumsum(recv_GL, axis=1)
      # compare_all: the default searchsorted is a loop, a host round trip per
      # iteration on GPU.
      lexp_GC = jax.vmap(lambda b: jnp.searchsorted(b, jnp.arange(C), side="right",
                                                    method="compare_all"))(bounds_GL)
      x_NH, probs_N, lexp_N = x_GCH.reshape(G * C, -1), probs_GC.reshape(-1), lexp_GC.reshape(-1)
      if axes.etp_gather:
        x_NH, probs_N, lexp_N = (gather_tokens(v, axes.etp_gather) for v in (x_NH, probs_N, lexp_N))
      # 3. sort received rows by local expert, run the experts, unsort.
      x_RH, probs_R2, group_sizes, place = permute(
          x_NH, probs_N[:, None], lexp_N[:, None], E_l, 0, None,
          None if rows_per_expert is None else E_l * rows_per_expert)
      y_NH = unpermute(expert_fn(x_RH, group_sizes, probs_R2, *weights), place)
      if axes.etp_gather:
        y_NH = scatter_tokens(y_NH, axes.etp_gather)
      if axes.etp_replicated:
        y_NH = jax.lax.psum(y_NH, axes.etp_replicated)
      # 4. send the outputs back and combine each token's rows.
      y_GCH = y_NH.reshape(G, C, -1)
      if G > 1:
        y_GCH = exchange(y_GCH, recv_G, send_G, axes.ep, primitive)
      return combine_rows(y_GCH.reshape(G * C, -1), slot_TK, src_R)

    operands = (x_TH, probs_TK, probs_R, keep_TK, *weights)
    if C >= Pn:
      return main(*operands)
    overflow = (send_G > C).any().astype(jnp.int32)
    if mesh_axes:  # one branch on every device (axis_index makes the flag varying on all axes)
      overflow = jax.lax.pmax(overflow + 0 * jax.lax.axis_index(mesh_axes), mesh_axes)
    # Rare overflow: the allgather path for this step (rematerialized, so the
    # untaken branch keeps no large residuals).
    slow = lambda x, p, _, keep, *w: jax.checkpoint(fallback)(x, p, idx_TK, keep, *w)
    return jax.lax.cond(overflow > 0, slow, main, *operands)
  return body


class TokenDispatcher:
  """dispatch → expert_fn → combine over the current mesh (or one device without one).

  `token_dispatcher_type`: 'allgather' or 'alltoall'; `token_exchange`: the
  alltoall exchange primitive; `exchange_capacity_factor`: alltoall buffer size
  (None: worst case, never falls back).
  """

  def __init__(self, num_experts: int, topk: int, token_dispatcher_type: str = "allgather",
               token_exchange: str = "all_to_all", exchange_capacity_factor: float | None = None):
    if token_dispatcher_type not in DISPATCHERS:
      raise ValueError(f"moe.token_dispatcher_type={token_dispatcher_type!r} must be one of {DISPATCHERS}")
    if token_exchange not in EXCHANGES:
      raise ValueError(f"moe.token_exchange={token_exchange!r} must be one of {EXCHANGES}")
    if exchange_capacity_factor is not None and exchange_capacity_factor < 1.0:
      raise ValueError(f"moe.exchange_capacity_factor={exchange_capacity_factor} must be >= 1.0 or None")
    self.num_experts = num_experts
    self.topk = topk
    self.kind = token_dispatcher_type
    self.exchange = token_exchange
    self.capacity_factor = exchange_capacity_factor

  def __call__(self, x_BSH, probs_BSK, idx_BSK, expert_fn: Callable, expert_weights: tuple,
               weight_specs: tuple, keep_BSK=None, rows_per_expert: int | None = None) -> jax.Array:
    """Returns the routed-expert output [B, S, H].

    keep_BSK (optional) marks the pairs kept after capacity dropping; then
    `rows_per_expert` (the expert capacity) sizes the expert buffers: E_l × capacity rows.
    """
    mesh = current_mesh()
    B, S, H = x_BSH.shape
    axes = MoEAxes()
    if mesh is not None:
      axes = _fit_token_axes(mesh, current_moe_axes(), B, S)
    ag = _allgather_body(axes, self.topk, expert_fn, rows_per_expert)
    # alltoall exchanges over ep: it needs the tokens sharded over every ep axis.
    use_a2a = self.kind == "alltoall" and all(a in axes.token for a in axes.ep)
    if use_a2a:
      mesh_axes = tuple(mesh.axis_names) if mesh is not None else ()
      fn = _alltoall_body(axes, self.topk, self.num_experts, expert_fn, self.exchange,
                          self.capacity_factor, mesh_axes, ag, rows_per_expert)
    else:
      fn = ag

    has_keep = keep_BSK is not None
    n_tok = 4 if has_keep else 3

    def body(*args):
      x_BSH, probs_BSK, idx_BSK = args[:3]
      keep_BSK, weights = (args[3] if has_keep else None), args[n_tok:]
      b, s = x_BSH.shape[:2]
      flat = lambda v: None if v is None else v.reshape(b * s, *v.shape[2:])
      out_TH = fn(flat(x_BSH), flat(probs_BSK), flat(idx_BSK), flat(keep_BSK), *weights)
      return out_TH.reshape(b, s, H).astype(x_BSH.dtype)

    args = (x_BSH, probs_BSK, idx_BSK) + ((keep_BSK,) if has_keep else ()) + tuple(expert_weights)
    if mesh is None:
      return body(*args)
    tok = P(_spec(axes.batch), _spec(axes.seq), None)
    return jax.shard_map(body, mesh=mesh, in_specs=(tok,) * n_tok + tuple(weight_specs), out_specs=tok)(*args)


class AllGatherTokenDispatcher(TokenDispatcher):
  """Gather tokens over ep×etp, compute local experts, reduce-scatter back."""

  def __init__(self, num_experts: int, topk: int):
    super().__init__(num_experts, topk, "allgather")


class AllToAllTokenDispatcher(TokenDispatcher):
  """Exchange the routed pairs over ep (dropless), all-gather over expert-TP."""

  def __init__(self, num_experts: int, topk: int, token_exchange: str = "all_to_all",
               exchange_capacity_factor: float | None = None):
    super().__init__(num_experts, topk, "alltoall", token_exchange, exchange_capacity_factor)
