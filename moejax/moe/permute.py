"""Row movement of the MoE layer: (token, expert) pairs into expert-sorted rows and back.

Legend: T tokens, K top-k, P = T·K pairs, H hidden, R rows of a row buffer, E_l local experts.

One pair of gathers, `dispatch_rows`/`combine_rows`, each the other's transpose, moves the
rows, so neither direction of autodiff scatter-adds rows (a gather-only gradient).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


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


def inverse_permutation(order, values, size):
  """out[order[j]] = values[j] (an integer scatter of a permutation; no gradient)."""
  return jnp.zeros((size,), values.dtype).at[order].set(values, unique_indices=True)


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where each (token, k) pair sits in a buffer of R rows, in both directions."""
  pair_R: jax.Array        # pair of each row as t·K + k; T·K for empty rows
  slot_TK: jax.Array       # row of each pair; R for pairs without a row

  @property
  def src_R(self):
    """Token of each row, T for empty rows."""
    return self.pair_R // self.slot_TK.shape[1]


def sort_pairs(key_P, num_keys: int):
  """Stable sort of the pairs by key (key == num_keys: pair has no row).

  Returns (sorted order, counts per key [num_keys], valid mask of sorted rows).
  """
  order_P = jnp.argsort(key_P, stable=True)
  counts = jnp.bincount(key_P, length=num_keys + 1)[:num_keys].astype(jnp.int32)
  valid_P = jnp.arange(key_P.shape[0]) < counts.sum()
  return order_P, counts, valid_P


def place_by_expert(idx_TK, num_local_experts: int, expert_offset, keep_TK=None, num_rows: int | None = None):
  """Rows sorted by local expert, then zero rows for the pairs of other experts (or dropped).

  R = T·K rows, or `num_rows` if smaller (a bound on the kept pairs, e.g. E_l × expert
  capacity when tokens are dropped). Returns (Placement, rows per local expert [E_l]).
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
  pair_R = jnp.where(row_valid_P[:R], order_P[:R], Pn)
  pos_P = jnp.arange(Pn)
  slot_P = inverse_permutation(order_P, jnp.where(row_valid_P & (pos_P < R), pos_P, R), Pn)
  return Placement(pair_R, slot_P.reshape(T, K)), group_sizes


def move_rows(x_TH, probs_TK, place: Placement):
  """(x_RH, probs_R): each row's token and routing prob; zero rows and prob 0 where empty."""
  return dispatch_rows(x_TH, place.src_R, place.slot_TK), _take(probs_TK.reshape(-1), place.pair_R)


def permute(x_TH, probs_TK, idx_TK, num_local_experts: int, expert_offset, keep_TK=None,
            num_rows: int | None = None):
  """Sorts the (token, expert) pairs by local expert (see `place_by_expert`).

  Returns x_RH, probs_R (0 on empty rows), group_sizes [E_l] and the `Placement` that
  `unpermute` inverts.
  """
  place, group_sizes = place_by_expert(idx_TK, num_local_experts, expert_offset, keep_TK, num_rows)
  x_RH, probs_R = move_rows(x_TH, probs_TK, place)
  return x_RH, probs_R, group_sizes, place


def unpermute(y_RH, place: Placement):
  """Inverse of `permute`: each token sums its rows (the probs were applied in the experts)."""
  return combine_rows(y_RH, place.slot_TK, place.src_R)
