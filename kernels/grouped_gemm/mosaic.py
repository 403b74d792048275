"""Pallas Mosaic GPU (Hopper: wgmma + TMA) grouped GEMM kernels.

Two kernels, bf16/f16 operands with fp32 accumulation:
  * `ragged_mm`        y[M,N] = x[M,K] @ w[g]  (or w[g]^T with transpose_rhs)
                       for the rows of group g; forward and dgrad.
  * `ragged_contract`  dw[g] = x_g^T @ dy_g    (ragged contracting dim); wgrad.

Both are one persistent CTA per SM with three warpgroups:
  * a producer issues the TMA loads of every k-step of every output tile this SM
    owns into a ring of `stages` shared-memory slots. The ring runs on across
    tiles (one step counter for the whole kernel), so the next tile's operands
    arrive while the consumers still finish the current one;
  * two consumers each own 64 rows of the 128-row output tile (wgmma m64 x
    tile_n, one wgmma group kept in flight), then write their rows through a
    swizzled shared-memory buffer with 64-row TMA stores.

Ragged rows never make a partial store. `ragged_mm` walks 128-row blocks of x;
a block that holds rows of several groups ("segments") runs the k-loop once per
segment into the same accumulator, with the rows of other groups zeroed in the
consumer's copy of the A tile, so each block is one full-tile store and rows past
sum(group_sizes) come out as exact zeros. A consumer skips the wgmma of a
segment with no rows in its half. `ragged_contract` zeroes the rows outside the
group in the first and last 64-row step of each group; empty groups store zeros.

Written by hand because no maintained library offers a dropless grouped GEMM with
its backward for JAX on Hopper (jax.lax.ragged_dot pads to a dense product; the
Pallas examples in jax.experimental.pallas.ops.gpu are forward-only). Every API
used exists in JAX 0.11.2 and 0.12. On CPU the kernels run under the Mosaic GPU
interpreter (`interpret=True`), which the test-suite uses on small shapes.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

ROWS = 64            # output rows per consumer warpgroup (wgmma M)
BLOCK = 2 * ROWS     # output rows per CTA tile
SMEM_BYTES = 232448  # dynamic shared memory per block on Hopper (227 KiB)
_EPI_BYTES = 128     # epilogue sub-tile row width in bytes (one 128-byte swizzle span)


@dataclasses.dataclass(frozen=True)
class TileConfig:
  """CTA tile 128 x tile_n, tile_k deep per pipeline step, `stages` ring slots.

  The CTA tiles are visited in `plgpu.planar_snake` order (grid_minor_dim,
  grid_tile_width) for L2 reuse.
  """
  tile_n: int = 256
  tile_k: int = 64
  stages: int = 4
  grid_tile_width: int = 4
  grid_minor_dim: int = 1


def smem_bytes(cfg: TileConfig, itemsize: int, out_itemsize: int) -> int:
  """Shared memory the kernels allocate for `cfg` (ring + epilogue buffers)."""
  del out_itemsize  # the epilogue buffers are 128 bytes wide for every dtype
  ring = cfg.stages * (BLOCK * cfg.tile_k + cfg.tile_k * cfg.tile_n) * itemsize
  return ring + 2 * 2 * ROWS * _EPI_BYTES


def fits(cfg: TileConfig, k: int, n: int, itemsize: int = 2) -> bool:
  """Whether `cfg` tiles a product contracting k into n columns and fits in SMEM."""
  return (k % cfg.tile_k == 0 and n % cfg.tile_n == 0 and cfg.tile_n <= 256
          and smem_bytes(cfg, itemsize, 4) + 1024 <= SMEM_BYTES)


def _num_sms(interpret) -> int:
  if interpret:
    return 2
  dev = jax.devices()[0]
  return getattr(dev, "core_count", None) or 132


def _transforms(minor: int, dtype):
  swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
  swizzle_elems = swizzle // jnp.dtype(dtype).itemsize
  return (plgpu.TilingTransform((8, swizzle_elems)), plgpu.SwizzleTransform(swizzle))


def block_schedule(group_sizes_G: jax.Array, m: int):
  """Segments of each 128-row block of x, computed by XLA.

  Returns (seg_3S, blk_2B). Segment s holds the rows [lo, hi) (block-relative)
  of group gid: seg[:, s] = (gid, lo, hi); segments are sorted by block. Block b
  owns segments blk[0, b] .. blk[0, b] + blk[1, b] - 1; rows of no segment (past
  sum(group_sizes)) are the tail, which the kernel writes as zeros. S = m/128 + G
  bounds the segment count (each group edge inside a block adds one).
  """
  g = group_sizes_G.shape[0]
  nb = m // BLOCK
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  first_blk = starts // BLOCK
  nblk = jnp.where(ends > starts, (ends - 1) // BLOCK - first_blk + 1, 0)
  offs_incl = jnp.cumsum(nblk)
  offs = offs_incl - nblk
  s_max = nb + g
  t = jnp.arange(s_max, dtype=jnp.int32)
  gid = jnp.minimum(jnp.searchsorted(offs_incl, t, side="right"), g - 1).astype(jnp.int32)
  blk = first_blk[gid] + t - offs[gid]
  valid = t < offs_incl[-1]
  lo = jnp.maximum(starts[gid] - blk * BLOCK, 0)
  hi = jnp.minimum(ends[gid] - blk * BLOCK, BLOCK)
  seg = jnp.stack([gid, jnp.where(valid, lo, 0), jnp.where(valid, hi, 0)]).astype(jnp.int32)
  seg_blk = jnp.where(valid, blk, nb)
  b = jnp.arange(nb, dtype=jnp.int32)
  first = jnp.searchsorted(seg_blk, b, side="left").astype(jnp.int32)
  count = jnp.searchsorted(seg_blk, b, side="right").astype(jnp.int32) - first
  return seg, jnp.stack([first, count]).astype(jnp.int32)


class _Ring:
  """The shared-memory ring between the producer and the two consumers."""

  def __init__(self, a_smem, b_smem, produced, consumed, stages):
    self.a, self.b = a_smem, b_smem
    self.produced, self.consumed, self.stages = produced, consumed, stages

  def produce(self, step, a_src, b_src):
    """Producer: load one k-step into slot step % stages once both consumers freed it."""
    slot = lax.rem(step, self.stages)

    @pl.when(step >= self.stages)
    def _():
      plgpu.barrier_wait(self.consumed.at[slot])

    plgpu.copy_gmem_to_smem(a_src, self.a.at[slot], self.produced.at[slot])
    plgpu.copy_gmem_to_smem(b_src, self.b.at[slot], self.produced.at[slot])
    return step + 1

  def consume(self, step, first, acc_ref, a_op, b_op, mask_ref, lo, hi, nrows):
    """Consumer: one k-step, keeping rows [lo, hi) of the `nrows` rows of `mask_ref`.

    Rows outside [lo, hi) are zeroed in shared memory before the wgmma; with no
    row kept the wgmma is skipped. The previous step's slot is released once its
    wgmma is done (one wgmma group stays in flight); `first` marks a tile's first
    step, whose predecessor was released at the end of the previous tile.
    """
    slot = lax.rem(step, self.stages)
    plgpu.barrier_wait(self.produced.at[slot])
    active = hi > lo

    @pl.when(active & ((lo > 0) | (hi < nrows)))
    def _():
      ref = mask_ref(slot)
      rows = plgpu.layout_cast(lax.broadcasted_iota(jnp.int32, ref.shape, 0),
                               plgpu.Layout.WGMMA)
      vals = ref[...]
      ref[...] = jnp.where((rows >= lo) & (rows < hi), vals, jnp.zeros_like(vals))
      plgpu.commit_smem()

    @pl.when(active)
    def _():
      plgpu.wgmma(acc_ref, a_op(slot), b_op(slot))
      plgpu.wgmma_wait(1)

    @pl.when(jnp.logical_not(active))
    def _():
      plgpu.wgmma_wait(0)

    @pl.when(jnp.logical_not(first))
    def _():
      plgpu.barrier_arrive(self.consumed.at[lax.rem(step + self.stages - 1, self.stages)])

    return step + 1

  def finish(self, step, had_steps):
    """Consumer, end of a tile: wait for the last wgmma and release its slot."""
    plgpu.wgmma_wait(0)

    @pl.when(had_steps)
    def _():
      plgpu.barrier_arrive(self.consumed.at[lax.rem(step + self.stages - 1, self.stages)])


def _store_rows(acc_ref, out_smem, wg, dst, out_dtype):
  """Write a consumer's 64 x tile_n accumulator: 64 x (128 bytes) sub-tiles through two
  swizzled SMEM slots, so one TMA store is in flight while the next slot fills."""
  acc = acc_ref[...].astype(out_dtype)
  epi_n = out_smem.shape[-1]
  n_sub = acc.shape[1] // epi_n
  for j in range(n_sub):
    # An odd sub-tile count restarts at slot 0 on the next tile: drain first.
    plgpu.wait_smem_to_gmem(1 if n_sub % 2 == 0 else 0, wait_read_only=True)
    out_smem[wg, j % 2] = acc[:, j * epi_n:(j + 1) * epi_n]
    plgpu.commit_smem()
    plgpu.copy_smem_to_gmem(out_smem.at[wg, j % 2], dst(j * epi_n, epi_n))


def _persistent_call(produce_unit, consume_unit, *, num_units, a_block, b_block, dtype,
                     out_shape, out_dtype, cfg, interpret, args):
  """Launch one CTA per SM: warpgroup 2 produces, warpgroups 0 and 1 consume.

  produce_unit(refs, ring, lin, step) -> step issues the loads of output tile `lin`;
  consume_unit(refs, ring, wg, acc_ref, store, lin, step) -> step runs its wgmmas and
  calls store(acc_ref, dst) with dst(col, width) -> the GMEM window of its rows.
  """
  stages = cfg.stages
  epi_n = _EPI_BYTES // jnp.dtype(out_dtype).itemsize

  def body(*refs):
    @functools.partial(
        pl.run_scoped,
        a_smem=plgpu.SMEM((stages, *a_block), dtype, transforms=_transforms(a_block[1], dtype)),
        b_smem=plgpu.SMEM((stages, *b_block), dtype, transforms=_transforms(b_block[1], dtype)),
        out_smem=plgpu.SMEM((2, 2, ROWS, epi_n), out_dtype,
                            transforms=_transforms(epi_n, out_dtype)),
        produced=plgpu.Barrier(num_arrivals=2, num_barriers=stages),
        consumed=plgpu.Barrier(num_arrivals=2, num_barriers=stages),
        collective_axes="wg",
    )
    def _scope(a_smem, b_smem, out_smem, produced, consumed):
      ring = _Ring(a_smem, b_smem, produced, consumed, stages)
      wg = lax.axis_index("wg")
      sm = lax.axis_index("sm")
      nsm = lax.axis_size("sm")
      n_local = lax.div(num_units - sm + nsm - 1, nsm)

      @pl.when(wg == 2)
      def _producer():
        plgpu.set_max_registers(40, action="decrease")
        lax.fori_loop(0, n_local,
                      lambda i, step: produce_unit(refs, ring, sm + i * nsm, step),
                      jnp.int32(0))

      @pl.when(wg < 2)
      def _consumers():
        plgpu.set_max_registers(232, action="increase")
        store = lambda acc_ref, dst: _store_rows(acc_ref, out_smem, wg, dst, out_dtype)

        def tile(i, step):
          return pl.run_scoped(
              lambda acc_ref: consume_unit(refs, ring, wg, acc_ref, store, sm + i * nsm, step),
              plgpu.ACC((ROWS, cfg.tile_n), jnp.float32))

        lax.fori_loop(0, n_local, tile, jnp.int32(0))
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  kw = dict(
      out_type=jax.ShapeDtypeStruct(out_shape, out_dtype),
      grid=(_num_sms(interpret),),
      grid_names=("sm",),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )
  if interpret:
    # Fresh buffers start as NaN, so an output element the kernel never writes
    # shows up in the tests; out-of-bounds reads raise.
    kw["interpret"] = plgpu.InterpretGPUParams(uninitialized_memory="nan")
  return plgpu.kernel(body, **kw)(*args)


def _check(cfg: TileConfig, itemsize: int, out_itemsize: int):
  need = smem_bytes(cfg, itemsize, out_itemsize) + 1024
  if need > SMEM_BYTES:
    raise ValueError(f"{cfg} needs {need} bytes of shared memory (> {SMEM_BYTES}); "
                     "use fewer stages or a smaller tile_n")


def ragged_mm(x_MK, w_GKN, group_sizes_G, *, cfg: TileConfig, transpose_rhs=False,
              out_dtype=None, interpret=False):
  """y[M,N] = x[M,K] @ w[g] (w_GKN: [G,K,N]) or x @ w[g]^T (w: [G,N,K]) per group.

  Needs M % 128 == 0, K % tile_k == 0, N % tile_n == 0 (the wrapper pads M).
  """
  m, k = x_MK.shape
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  kk = w_GKN.shape[2] if transpose_rhs else w_GKN.shape[1]
  assert kk == k, (x_MK.shape, w_GKN.shape, transpose_rhs)
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  tn, tk = cfg.tile_n, cfg.tile_k
  assert m % BLOCK == 0 and k % tk == 0 and n % tn == 0, (m, k, n, cfg)
  _check(cfg, x_MK.dtype.itemsize, out_dtype.itemsize)
  k_iters, grid_n, num_blocks = k // tk, n // tn, m // BLOCK
  seg, blk = block_schedule(group_sizes_G, m)

  def coords(blk_gmem, lin):
    b, ni = plgpu.planar_snake(lin, (num_blocks, grid_n), cfg.grid_minor_dim,
                               cfg.grid_tile_width)
    return b, ni, blk_gmem[0, b], blk_gmem[1, b]

  def produce_unit(refs, ring, lin, step):
    seg_gmem, blk_gmem, x_gmem, w_gmem, _ = refs
    b, ni, first, count = coords(blk_gmem, lin)

    def segment(s, step):
      wg_ = w_gmem.at[seg_gmem[0, s]]

      def k_step(ki, step):
        x_src = x_gmem.at[pl.ds(b * BLOCK, BLOCK), pl.ds(ki * tk, tk)]
        w_src = (wg_.at[pl.ds(ni * tn, tn), pl.ds(ki * tk, tk)] if transpose_rhs
                 else wg_.at[pl.ds(ki * tk, tk), pl.ds(ni * tn, tn)])
        return ring.produce(step, x_src, w_src)

      return lax.fori_loop(0, k_iters, k_step, step)

    return lax.fori_loop(first, first + count, segment, step)

  def consume_unit(refs, ring, wg, acc_ref, store, lin, step):
    seg_gmem, blk_gmem, _, _, o_gmem = refs
    b, ni, first, count = coords(blk_gmem, lin)
    row0 = wg * ROWS
    a_rows = lambda slot: ring.a.at[slot, pl.ds(row0, ROWS)]
    b_op = ((lambda slot: ring.b.at[slot].transpose((1, 0))) if transpose_rhs
            else (lambda slot: ring.b.at[slot]))

    def segment(s, step):
      lo = jnp.clip(seg_gmem[1, s] - row0, 0, ROWS)
      hi = jnp.clip(seg_gmem[2, s] - row0, 0, ROWS)
      return lax.fori_loop(
          0, k_iters,
          lambda ki, step: ring.consume(step, (s == first) & (ki == 0), acc_ref, a_rows,
                                        b_op, a_rows, lo, hi, ROWS),
          step)

    step = lax.fori_loop(first, first + count, segment, step)
    ring.finish(step, count > 0)
    store(acc_ref, lambda col, width: o_gmem.at[pl.ds(b * BLOCK + row0, ROWS),
                                                pl.ds(ni * tn + col, width)])
    return step

  return _persistent_call(
      produce_unit, consume_unit, num_units=num_blocks * grid_n,
      a_block=(BLOCK, tk), b_block=(tn, tk) if transpose_rhs else (tk, tn),
      dtype=x_MK.dtype, out_shape=(m, n), out_dtype=out_dtype, cfg=cfg,
      interpret=interpret, args=(seg, blk, x_MK, w_GKN))


def ragged_contract(x_MK, dy_MN, group_sizes_G, *, cfg: TileConfig, out_dtype=None,
                    interpret=False):
  """dw[g] = x[rows of g]^T @ dy[rows of g]  ->  [G, K, N]; empty groups give 0.

  tile_k rows of the group are contracted per step. Needs M % tile_k == 0,
  K % 128 == 0 and N % tile_n == 0 (the wrapper pads M and K).
  """
  m, k = x_MK.shape
  m2, n = dy_MN.shape
  assert m == m2
  g = group_sizes_G.shape[0]
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  tn, tk = cfg.tile_n, cfg.tile_k
  assert m % tk == 0 and k % BLOCK == 0 and n % tn == 0, (m, k, n, cfg)
  _check(cfg, x_MK.dtype.itemsize, out_dtype.itemsize)
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m).astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  blk0 = starts // tk
  nblk = jnp.where(ends > starts, pl.cdiv(ends, tk) - blk0, 0)
  info_4G = jnp.stack([starts, ends, nblk, blk0]).astype(jnp.int32)
  grid_m, grid_n = k // BLOCK, n // tn
  per_group = grid_m * grid_n

  def coords(info_gmem, lin):
    gi = lax.div(lin, per_group)
    mi, ni = plgpu.planar_snake(lax.rem(lin, per_group), (grid_m, grid_n),
                                cfg.grid_minor_dim, cfg.grid_tile_width)
    return gi, mi, ni, [info_gmem[r, gi] for r in range(4)]

  def produce_unit(refs, ring, lin, step):
    info_gmem, x_gmem, dy_gmem, _ = refs
    _, mi, ni, (_, _, count, first) = coords(info_gmem, lin)

    def k_step(j, step):
      rows = pl.ds((first + j) * tk, tk)
      return ring.produce(step, x_gmem.at[rows, pl.ds(mi * BLOCK, BLOCK)],
                          dy_gmem.at[rows, pl.ds(ni * tn, tn)])

    return lax.fori_loop(0, count, k_step, step)

  def consume_unit(refs, ring, wg, acc_ref, store, lin, step):
    info_gmem, _, _, o_gmem = refs
    gi, mi, ni, (start, end, count, first) = coords(info_gmem, lin)
    col0 = wg * ROWS
    x_cols = lambda slot: ring.a.at[slot, :, pl.ds(col0, ROWS)]

    def k_step(j, step):
      row = (first + j) * tk
      lo = jnp.clip(start - row, 0, tk)
      hi = jnp.clip(end - row, 0, tk)
      return ring.consume(step, j == 0, acc_ref,
                          lambda slot: x_cols(slot).transpose((1, 0)),
                          lambda slot: ring.b.at[slot], x_cols, lo, hi, tk)

    step = lax.fori_loop(0, count, k_step, step)
    ring.finish(step, count > 0)
    store(acc_ref, lambda col, width: o_gmem.at[gi, pl.ds(mi * BLOCK + col0, ROWS),
                                                pl.ds(ni * tn + col, width)])
    return step

  return _persistent_call(
      produce_unit, consume_unit, num_units=g * per_group,
      a_block=(tk, BLOCK), b_block=(tk, tn), dtype=x_MK.dtype, out_shape=(g, k, n),
      out_dtype=out_dtype, cfg=cfg, interpret=interpret, args=(info_4G, x_MK, dy_MN))
