"""Grouped GEMM through XLA on row tiles: the CPU backend (`impl="tiled"`).

On CPU, `jax.lax.ragged_dot` lowers to one dense product over every group (each row multiplied by
all G weights, the others masked to zero): G times the work, 8x on the tiny recipe. Here each
group is cut into tiles of `b` rows from its first row, the tiles are gathered into [T, b, K]
(rows outside the tile's group zero) and multiplied by their groups' weights in one batched
matmul, and each output row is gathered back from its tile. The work is the rows rounded up to
whole tiles per group. The backward pass keeps the operands and the tiles' indices (no gathered
copy of the weights per layer): dgrad is the same product with each weight transposed, wgrad the tiles'
x^T dy summed per group.

Written here because XLA has no ragged dot on CPU that skips other groups' weights; the Pallas
kernels (mosaic.py) are for Hopper GPUs.
"""
from __future__ import annotations

import functools
import typing

import jax
import jax.numpy as jnp


def rows_per_tile(m: int, g: int) -> int:
  """Tile height: the power of two at or above the mean group size, within [8, 128] (larger
  tiles waste more rows in each group's last tile), raised while more than 4g tiles would be
  needed, so the gathered weights stay within ~5x the weights."""
  b = min(128, max(8, 1 << max(0, -(-m // g) - 1).bit_length()))
  while -(-m // b) > 4 * g:
    b *= 2
  return b


class _Tiles(typing.NamedTuple):
  gid: jax.Array      # [T] group of each tile; g for the unused ones (sum(ceil(size/b)) <= ceil(m/b) + g)
  rows: jax.Array     # [T, b] row of x each tile row reads (clipped inside x)
  mine: jax.Array     # [T, b] whether that row belongs to the tile's group
  at: jax.Array       # [M] flat index (tile * b + row in tile) of each output row
  kept: jax.Array     # [M] rows inside sum(group_sizes)


def _tiles(group_sizes_G, m: int, g: int) -> _Tiles:
  b = rows_per_tile(m, g)
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  ntiles = (ends - starts + b - 1) // b
  first_tile = jnp.cumsum(ntiles) - ntiles
  t = jnp.arange(-(-m // b) + g, dtype=jnp.int32)
  # compare_all: T x G comparisons in one fusion, not a loop (as mosaic.tile_schedule)
  gid = jnp.searchsorted(jnp.cumsum(ntiles), t, side="right", method="compare_all").astype(jnp.int32)
  gid_w = jnp.minimum(gid, g - 1)
  rows = (starts[gid_w] + (t - first_tile[gid_w]) * b)[:, None] + jnp.arange(b, dtype=jnp.int32)
  mine = (gid < g)[:, None] & (rows < ends[gid_w][:, None])
  r = jnp.arange(m, dtype=jnp.int32)
  row_g = jnp.searchsorted(ends, r, side="right", method="compare_all").astype(jnp.int32)
  row_gw = jnp.minimum(row_g, g - 1)
  off = r - starts[row_gw]
  return _Tiles(gid, jnp.clip(rows, 0, m - 1), mine, (first_tile[row_gw] + off // b) * b + off % b,
                row_g < g)


def _gather_rows(a_MX, tiles: _Tiles):
  """[T, b, X]: each tile's rows of a, zero where they are not the tile group's."""
  return jnp.where(tiles.mine[..., None], a_MX[tiles.rows], jnp.zeros((), a_MX.dtype))


def _product(a_MK, w_GKN, tiles: _Tiles, out_dtype):
  """Rows of a times their groups' w: [M, N], zero past sum(group_sizes)."""
  g = w_GKN.shape[0]
  y_TbN = jnp.einsum("tbk,tkn->tbn", _gather_rows(a_MK, tiles), w_GKN[jnp.minimum(tiles.gid, g - 1)],
                     preferred_element_type=jnp.float32)
  y_MN = y_TbN.reshape(-1, y_TbN.shape[-1])[tiles.at]
  return jnp.where(tiles.kept[:, None], y_MN, 0).astype(out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _tiled(x_MK, w_GKN, group_sizes_G, out_dtype):
  return _tiled_fwd(x_MK, w_GKN, group_sizes_G, out_dtype)[0]


def _tiled_fwd(x_MK, w_GKN, group_sizes_G, out_dtype):
  tiles = _tiles(group_sizes_G, x_MK.shape[0], w_GKN.shape[0])
  return _product(x_MK, w_GKN, tiles, out_dtype), (x_MK, w_GKN, tiles)


def _tiled_bwd(out_dtype, res, dy_MN):
  x_MK, w_GKN, tiles = res  # the tiles' integer indices, not a gathered copy of x or w
  g = w_GKN.shape[0]
  dx = _product(dy_MN, jnp.swapaxes(w_GKN, 1, 2), tiles, x_MK.dtype)
  dw_TKN = jnp.einsum("tbk,tbn->tkn", _gather_rows(x_MK, tiles), _gather_rows(dy_MN, tiles),
                      preferred_element_type=jnp.float32)
  dw = jax.ops.segment_sum(dw_TKN, tiles.gid, num_segments=g, indices_are_sorted=True)  # unused tiles: id g, dropped
  return dx, dw.astype(w_GKN.dtype), None


_tiled.defvjp(_tiled_fwd, _tiled_bwd)


def tiled_mm(x_MK: jax.Array, w_GKN: jax.Array, group_sizes_G: jax.Array, *,
             preferred_element_type=None) -> jax.Array:
  """y[M, N] = x[M, K] @ w[g] for the rows of group g; rows past sum(group_sizes) give 0.
  Products accumulate in fp32; y is preferred_element_type, else x's dtype."""
  out_dtype = jnp.dtype(preferred_element_type or jnp.result_type(x_MK, w_GKN))
  return _tiled(x_MK, w_GKN, group_sizes_G, out_dtype)
