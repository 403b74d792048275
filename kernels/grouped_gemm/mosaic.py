"""Pallas Mosaic GPU (Hopper: wgmma + TMA) grouped GEMM kernels.

Three kernels, all bf16/f16 operands with fp32 accumulation:
  * `ragged_mm`        y[M,N] = x[M,K] @ w[g]   (or w[g]^T with transpose_rhs)
                       for the rows of group g; forward and dgrad.
  * `ragged_contract`  dw[g] = x_g^T @ dy_g      (ragged contracting dim); wgrad.

Rows of x are sorted by group. Rows past sum(group_sizes) (the "tail") are
written as zeros by `ragged_mm`; they never contribute to `ragged_contract`.
The M-tile schedule (which group/row-block each tile covers) is computed by
XLA outside the kernel, so the kernel only visits tiles that hold rows.

Design follows jax.experimental.pallas.ops.gpu.{ragged_dot,
transposed_ragged_dot, hopper_matmul}_mgpu; all APIs used exist in JAX 0.11.2
and 0.12. On CPU the same kernels run under the Mosaic GPU interpreter
(`interpret=True`), which the test-suite uses on small shapes.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
from jax import lax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu


@dataclasses.dataclass(frozen=True)
class MMConfig:
  """Tiles for `ragged_mm`. ws=True: 2 consumer warpgroups + 1 TMA producer,
  CTA tile (tile_m, 2*tile_n); ws=False: one warpgroup, CTA tile (tile_m, tile_n)."""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 64
  stages: int = 3
  grid_tile_width: int = 4
  grid_minor_dim: int = 1
  ws: bool = True

  def cta_n(self) -> int:
    return self.tile_n * (2 if self.ws else 1)


@dataclasses.dataclass(frozen=True)
class ContractConfig:
  """Tiles for `ragged_contract`: output tile (tile_m, tile_n) of dw[g]; tile_k rows per step."""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 64
  stages: int = 4
  grid_tile_width: int = 4


def _num_sms(interpret) -> int:
  if interpret:
    return 2
  dev = jax.devices()[0]
  return getattr(dev, "core_count", None) or 132


def _interpret_arg(interpret):
  if not interpret:
    return None
  # Fresh buffers start as NaN, so an output element the kernel never writes
  # shows up in the tests; out-of-bounds reads raise.
  return plgpu.InterpretGPUParams(uninitialized_memory="nan")


def _transforms(tile_minor: int, dtype):
  swizzle = plgpu.find_swizzle(tile_minor * jnp.dtype(dtype).itemsize * 8)
  swizzle_elems = swizzle // jnp.dtype(dtype).itemsize
  return (plgpu.TilingTransform((8, swizzle_elems)), plgpu.SwizzleTransform(swizzle))


def m_schedule(group_sizes_G: jax.Array, m: int, tile_m: int):
  """Row-tile schedule for a ragged-M product, computed by XLA.

  Returns (sched_4T, num_tiles_1): for tile t < num_tiles, sched[:, t] =
  (group, row_block, first_row_in_block, row_count). Group index G is the
  pseudo-group of tail rows past sum(group_sizes), which the kernel zero-fills.
  T = cdiv(m, tile_m) + G bounds the tile count (each group boundary inside a
  row block adds one tile).
  """
  g = group_sizes_G.shape[0]
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  starts = jnp.concatenate([starts, ends[-1:]])  # tail pseudo-group
  ends = jnp.concatenate([ends, jnp.full((1,), m, jnp.int32)])
  nonempty = ends > starts
  first_blk = starts // tile_m
  last_blk = (ends - 1) // tile_m
  nblk = jnp.where(nonempty, last_blk - first_blk + 1, 0)
  offs_incl = jnp.cumsum(nblk)
  offs = offs_incl - nblk
  t_max = pl.cdiv(m, tile_m) + g
  t = jnp.arange(t_max, dtype=jnp.int32)
  gid = jnp.minimum(jnp.searchsorted(offs_incl, t, side="right"), g).astype(jnp.int32)
  blk = first_blk[gid] + t - offs[gid]
  blk_start = blk * tile_m
  lo = jnp.maximum(starts[gid], blk_start)
  hi = jnp.minimum(ends[gid], blk_start + tile_m)
  valid = t < offs_incl[-1]
  sched = jnp.stack([
      jnp.where(valid, gid, g),
      jnp.where(valid, blk, 0),
      jnp.where(valid, lo - blk_start, 0),
      jnp.where(valid, hi - lo, 0),
  ]).astype(jnp.int32)
  return sched, offs_incl[-1:].astype(jnp.int32)


def _store_rows(out_smem, o_gmem, row0, row_lo, row_cnt, col0, tile_m, tile_n):
  """TMA-store rows [row_lo, row_lo+row_cnt) of a staged tile, as a ladder of
  power-of-two row slices (TMA boxes must have static sizes)."""
  start = row_lo
  p = 1 << int(math.log2(tile_m))
  while p >= 1:
    size = p

    @pl.when(row_cnt & size != 0)
    def _():
      plgpu.copy_smem_to_gmem(
          out_smem.at[pl.ds(start, size)],
          o_gmem.at[pl.ds(row0 + start, size), pl.ds(col0, tile_n)],
      )

    start = start + (row_cnt & size)
    p //= 2


def _kernel_kwargs(out_shape, out_dtype, interpret):
  """plgpu.kernel arguments shared by both kernels: one persistent program per SM."""
  kw = dict(
      out_type=jax.ShapeDtypeStruct(out_shape, out_dtype),
      grid=(_num_sms(interpret),),
      grid_names=("sm",),
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )
  if interpret:
    kw["interpret"] = _interpret_arg(interpret)
  return kw


def ragged_mm(x_MK, w_GKN, group_sizes_G, *, cfg: MMConfig, transpose_rhs=False,
              out_dtype=None, interpret=False):
  """y[M,N] = x[M,K] @ w[g] (w_GKN: [G,K,N]) or x @ w[g]^T (w: [G,N,K]) per group.

  Needs M % tile_m == 0, K % tile_k == 0, N % cta_n == 0 (the wrapper pads M).
  """
  m, k = x_MK.shape
  g = w_GKN.shape[0]
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  kk = w_GKN.shape[2] if transpose_rhs else w_GKN.shape[1]
  assert kk == k, (x_MK.shape, w_GKN.shape, transpose_rhs)
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  tile_m, tile_n, tile_k = cfg.tile_m, cfg.tile_n, cfg.tile_k
  cta_n = cfg.cta_n()
  assert m % tile_m == 0 and k % tile_k == 0 and n % cta_n == 0, (m, k, n, cfg)
  k_iters = k // tile_k
  grid_n = n // cta_n
  dtype = x_MK.dtype
  a_tr = _transforms(tile_k, dtype)
  b_tr = _transforms(tile_k if transpose_rhs else cta_n, dtype)
  sched, ntiles = m_schedule(group_sizes_G, m, tile_m)

  def b_spec():
    if transpose_rhs:
      return plgpu.BlockSpec((cta_n, tile_k), lambda ki: (0, ki), transforms=b_tr,
                             memory_space=plgpu.SMEM)
    return plgpu.BlockSpec((tile_k, cta_n), lambda ki: (ki, 0), transforms=b_tr,
                           memory_space=plgpu.SMEM)

  def w_slice(w_gmem, gid, ni):
    wg = w_gmem.at[gid]
    if transpose_rhs:
      return wg.at[pl.ds(ni * cta_n, cta_n), :]
    return wg.at[:, pl.ds(ni * cta_n, cta_n)]

  def b_view(b_smem, off):
    if transpose_rhs:
      return b_smem.at[pl.ds(off, tile_n), :].transpose((1, 0))
    return b_smem.at[:, pl.ds(off, tile_n)]

  def tile_coords(sched_gmem, lin, num_m):
    mi, ni = plgpu.planar_snake(lin, (num_m, grid_n), cfg.grid_minor_dim,
                                cfg.grid_tile_width)
    return (ni, sched_gmem[0, mi], sched_gmem[1, mi], sched_gmem[2, mi],
            sched_gmem[3, mi])

  def body_ws(sched_gmem, ntiles_gmem, x_gmem, w_gmem, o_gmem):
    def get_pipeline(pipeline_body, compute_context):
      return plgpu.emit_pipeline_warp_specialized(
          pipeline_body,
          grid=(k_iters,),
          memory_registers=40,
          in_specs=[
              plgpu.BlockSpec((tile_m, tile_k), lambda ki: (0, ki), transforms=a_tr,
                              memory_space=plgpu.SMEM),
              b_spec(),
          ],
          wg_axis="wg",
          num_compute_wgs=2,
          max_concurrent_steps=cfg.stages,
          compute_context=compute_context,
      )

    ignore = lambda *_, **__: None

    @functools.partial(
        pl.run_scoped,
        pipeline_allocs=get_pipeline(ignore, ignore).get_allocations(
            x_gmem, w_gmem.at[0]),
        out_smem=plgpu.SMEM((2, tile_m, tile_n), out_dtype),
        collective_axes="wg",
    )
    def _scope(pipeline_allocs, out_smem):
      wg_idx = lax.axis_index("wg")
      num_m = ntiles_gmem[0]

      @plgpu.nd_loop((num_m * grid_n,), collective_axes="sm")
      def _loop(loop_info):
        (lin,) = loop_info.index
        ni, gid, blk, row_lo, row_cnt = tile_coords(sched_gmem, lin, num_m)
        row0 = blk * tile_m
        col0 = ni * cta_n + wg_idx * tile_n

        def stage_and_store(tile):
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          out_smem[wg_idx] = tile
          plgpu.commit_smem()
          _store_rows(out_smem.at[wg_idx], o_gmem, row0, row_lo, row_cnt, col0,
                      tile_m, tile_n)

        def compute_context(eval_pipeline):
          @functools.partial(pl.run_scoped,
                             acc_ref=plgpu.ACC((tile_m, tile_n), jnp.float32))
          def _acc_scope(acc_ref):
            eval_pipeline(acc_ref)
            stage_and_store(acc_ref[...].astype(out_dtype))

        def mma_body(_, a_smem, b_smem, acc_ref):
          plgpu.wgmma(acc_ref, a_smem, b_view(b_smem, wg_idx * tile_n))
          plgpu.wgmma_wait(0)
          return acc_ref

        @pl.when((row_cnt > 0) & (gid < g))
        def _():
          get_pipeline(mma_body, compute_context)(
              x_gmem.at[pl.ds(row0, tile_m), :],
              w_slice(w_gmem, gid, ni),
              allocations=pipeline_allocs,
          )

        @pl.when((row_cnt > 0) & (gid == g) & (wg_idx < 2))
        def _():
          zeros = plgpu.layout_cast(jnp.zeros((tile_m, tile_n), out_dtype),
                                    plgpu.Layout.WGMMA)
          stage_and_store(zeros)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  def body_simple(sched_gmem, ntiles_gmem, x_gmem, w_gmem, o_gmem):
    num_m = ntiles_gmem[0]

    @functools.partial(pl.run_scoped, out_smem=plgpu.SMEM((tile_m, tile_n), out_dtype))
    def _scope(out_smem):
      @plgpu.nd_loop((num_m * grid_n,), collective_axes="sm")
      def _loop(loop_info):
        (lin,) = loop_info.index
        ni, gid, blk, row_lo, row_cnt = tile_coords(sched_gmem, lin, num_m)
        row0 = blk * tile_m

        def acc_scope(acc_ref):
          @pl.when((row_cnt > 0) & (gid < g))
          def _():
            plgpu.emit_pipeline(
                lambda _, a_smem, b_smem: plgpu.wgmma(acc_ref, a_smem, b_view(b_smem, 0)),
                grid=(k_iters,),
                in_specs=[
                    plgpu.BlockSpec((tile_m, tile_k), lambda ki: (0, ki),
                                    transforms=a_tr, delay_release=1),
                    plgpu.BlockSpec(
                        (tile_n, tile_k) if transpose_rhs else (tile_k, tile_n),
                        (lambda ki: (0, ki)) if transpose_rhs else (lambda ki: (ki, 0)),
                        transforms=b_tr, delay_release=1),
                ],
                max_concurrent_steps=cfg.stages,
            )(x_gmem.at[pl.ds(row0, tile_m), :], w_slice(w_gmem, gid, ni))
          return acc_ref[...]

        acc = pl.run_scoped(acc_scope, plgpu.ACC((tile_m, tile_n)))

        @pl.when(row_cnt > 0)
        def _():
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          out_smem[...] = acc.astype(out_dtype)
          plgpu.commit_smem()
          _store_rows(out_smem, o_gmem, row0, row_lo, row_cnt, ni * cta_n,
                      tile_m, tile_n)

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  kw = _kernel_kwargs((m, n), out_dtype, interpret)
  if cfg.ws:
    kernel = plgpu.kernel(body_ws, num_threads=3, thread_name="wg", **kw)
  else:
    kernel = plgpu.kernel(body_simple, **kw)
  return kernel(sched, ntiles, x_MK, w_GKN)


def ragged_contract(x_MK, dy_MN, group_sizes_G, *, cfg: ContractConfig,
                    out_dtype=None, interpret=False):
  """dw[g] = x[rows of g]^T @ dy[rows of g]  ->  [G, K, N]; empty groups give 0.

  Needs M % tile_k == 0, K % tile_m == 0, N % tile_n == 0 (the wrapper pads M).
  """
  m, k = x_MK.shape
  m2, n = dy_MN.shape
  assert m == m2
  g = group_sizes_G.shape[0]
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  tile_m, tile_n, tile_k = cfg.tile_m, cfg.tile_n, cfg.tile_k
  assert m % tile_k == 0 and k % tile_m == 0 and n % tile_n == 0, (m, k, n, cfg)
  dtype = x_MK.dtype
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m).astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  blk_starts = starts // tile_k
  nblk = jnp.where(ends > starts, pl.cdiv(ends, tile_k) - blk_starts, 0).astype(jnp.int32)
  info_4G = jnp.stack([starts, ends, nblk, blk_starts * tile_k]).astype(jnp.int32)
  a_tr = _transforms(tile_m, dtype)
  b_tr = _transforms(tile_n, dtype)
  grid_m = k // tile_m
  grid_n = n // tile_n

  def body(info_gmem, x_gmem, dy_gmem, o_gmem):
    @functools.partial(
        pl.run_scoped,
        o_smem=plgpu.SMEM((tile_m, tile_n), out_dtype,
                          transforms=_transforms(tile_n, out_dtype)))
    def _scope(o_smem):
      @plgpu.nd_loop((g, grid_m * grid_n), collective_axes="sm")
      def _loop(loop_info):
        gi = loop_info.index[0]
        mi, ni = plgpu.planar_snake(loop_info.index[1], (grid_m, grid_n), 1,
                                    cfg.grid_tile_width)
        g_start = info_gmem[0, gi]
        g_end = info_gmem[1, gi]
        g_nblk = info_gmem[2, gi]
        row_base = pl.multiple_of(info_gmem[3, gi], tile_k)
        blk0 = info_gmem[3, gi] // tile_k

        def acc_scope(acc_ref):
          def step(idx, a_smem, b_smem):
            bi = idx[0]
            row_iota = plgpu.layout_cast(
                lax.broadcasted_iota(jnp.int32, (tile_k, tile_m), 0),
                plgpu.Layout.WGMMA)
            first_row = row_base + bi * tile_k

            @pl.when((bi == 0) | (bi == g_nblk - 1))
            def _():
              a = a_smem[...]
              keep = ((row_iota + first_row) >= g_start) & (
                  (row_iota + first_row) < g_end)
              a_smem[...] = a * keep.astype(a.dtype)
              plgpu.commit_smem()

            plgpu.wgmma(acc_ref, a_smem.transpose((1, 0)), b_smem)
            if cfg.stages == 1:
              plgpu.wgmma_wait(0)

          @pl.when(g_nblk > 0)
          def _():
            delay = 1 if cfg.stages > 1 else 0
            plgpu.emit_pipeline(
                step,
                grid=(g_nblk,),
                in_specs=[
                    plgpu.BlockSpec((tile_k, tile_m), lambda bi: (blk0 + bi, mi),
                                    delay_release=delay, transforms=a_tr),
                    plgpu.BlockSpec((tile_k, tile_n), lambda bi: (blk0 + bi, ni),
                                    delay_release=delay, transforms=b_tr),
                ],
                max_concurrent_steps=cfg.stages,
            )(x_gmem, dy_gmem)
          return acc_ref[...]

        acc = pl.run_scoped(acc_scope, plgpu.ACC((tile_m, tile_n)))
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        o_smem[...] = acc.astype(out_dtype)
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(
            o_smem, o_gmem.at[gi, pl.ds(mi * tile_m, tile_m), pl.ds(ni * tile_n, tile_n)])

    plgpu.wait_smem_to_gmem(0, wait_read_only=True)

  kw = _kernel_kwargs((g, k, n), out_dtype, interpret)
  return plgpu.kernel(body, **kw)(info_4G, x_MK, dy_MN)
