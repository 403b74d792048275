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
    swizzled shared-memory buffer with 64-row TMA stores; or, with
    `TileConfig.pingpong`, each consumer computes every other tile whole, so one
    consumer's epilogue runs under the other's wgmmas. With `TileConfig.cluster=2`
    pairs of CTAs compute neighbouring column tiles and multicast the rows they share.

`ragged_mm` cuts each group into 128-row tiles from the group's first row (as
CUTLASS grouped GEMMs do; rounded down to 8 rows for TMA), so every tile costs
the same k-loop. Equal tiles keep the statically assigned SMs in step, which keeps
their joint working set inside L2 (tiles of unequal cost let the SMs drift apart:
ncu showed 2-8x the DRAM traffic; benchmarks/RESULTS.md). Full tiles store
through swizzled SMEM; the last tile of a group stores its rows with a ladder of
power-of-two TMA row stores from an unswizzled buffer that aliases the same SMEM
(`plgpu.RefUnion`); rows past sum(group_sizes) are written as zeros without any
wgmma. A consumer skips the wgmma of a tile with no rows in its half. The TileConfig
flags half_tiles, swap_ab and merge_tail make a group's part-filled last tile cost
about its rows' share.
`ragged_contract` zeroes the rows outside the group in the first and last 64-row
step of each group; empty groups store zeros. Its tiles cost their group's number of
steps, so they are dealt to the SMs heaviest group first, in alternating direction
(`_dealt`), to keep the SMs' totals equal.

Written by hand because no maintained library offers a dropless grouped GEMM with
its backward for JAX on Hopper (jax.lax.ragged_dot pads to a dense product; the
Pallas examples in jax.experimental.pallas.ops.gpu are forward-only). Every API
used exists in JAX 0.11.2 and 0.12. On CPU the kernels run under the Mosaic GPU
interpreter (`interpret=True`), which the test-suite uses on small shapes; the
interpreter runs 2-CTA cluster kernels only with several CPU devices (the tests emulate 8):
with one or two, the interpreted CTAs of a cluster were seen to hang.
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
SWAP_ROWS = (32, 64)  # heights of swap-AB tiles (TileConfig.swap_ab): wgmma's N


@dataclasses.dataclass(frozen=True)
class TileConfig:
  """CTA tile 128 x tile_n, tile_k deep per pipeline step, `stages` ring slots.

  The CTA tiles are visited in `plgpu.planar_snake` order (grid_minor_dim,
  grid_tile_width) for L2 reuse. pingpong: each consumer warpgroup computes whole
  128-row tiles of its own, every other tile of the SM (tile_n <= 128: a 128 x tile_n
  fp32 accumulator per warpgroup); otherwise the two consumers split each tile's rows,
  and alternate_epilogues makes them take turns storing their tiles (see
  `_persistent_call`). cluster=2: pairs of CTAs compute two neighbouring column tiles of
  one row block and load its rows once for both (TMA multicast), cutting the L2 traffic
  of the row operand by half (the column tiles must pair up); with pingpong, the two
  CTAs' consumers c share their tiles' rows. half_tiles (forward/dgrad): a tile whose
  rows fit in one 64-row half costs half (ping-pong runs it with a 64-row accumulator;
  shared tiles already skip the empty half's wgmmas), and the tiles are reordered within
  each wave of one tile per SM so every SM gets the same number of half tiles, which keeps
  the statically assigned SMs in step (`_balanced_order`). swap_ab (forward/dgrad, 16-bit
  outputs; shared tiles need tile_n >= 128): a tile whose rows end within its first 64 runs
  swapped, CUTLASS's swap-AB: the weight block's columns are wgmma's M and the tile's rows,
  rounded up to 32, its N (`SWAP_ROWS`), so a group's part-filled last tile costs about its
  rows' share instead of a whole tile; only those rows are loaded, the accumulator is stored
  transposed (`_store_swapped`), and these tiles are spread as half tiles are. merge_tail
  (0, 32 or 64; forward/dgrad, 16-bit outputs; shared tiles need tile_n >= 128): a group's
  last tile whose rows end within its first merge_tail joins the group's previous full tile
  (`tile_schedule`), computed swap-AB beside it from the same k-steps (a second accumulator:
  the consumer's columns x those rows rounded up to 32), so those rows stream no weight block
  of their own; the ring's row slots hold 128 + merge_tail rows (fewer stages fit), and the
  merged tiles, heavier than a full one, are dealt to the SMs in a deal of their own.
  """
  tile_n: int = 256
  tile_k: int = 64
  stages: int = 4
  grid_tile_width: int = 4
  grid_minor_dim: int = 1
  alternate_epilogues: bool = True
  pingpong: bool = False
  cluster: int = 1
  half_tiles: bool = False
  swap_ab: bool = False
  merge_tail: int = 0


def merged_rows(cfg: TileConfig, out_dtype) -> int:
  """The most rows of a group's last tile that `ragged_mm` with `cfg` merges into the previous
  tile (`TileConfig.merge_tail`; the swapped store takes 16-bit outputs only)."""
  return cfg.merge_tail if jnp.dtype(out_dtype).itemsize == 2 else 0


def _slot_rows(cfg: TileConfig) -> int:
  """Rows of a ring slot of `ragged_mm`'s row operand: a tile, and a merged tail's rows."""
  return BLOCK + cfg.merge_tail


def smem_bytes(cfg: TileConfig, itemsize: int) -> int:
  """Shared memory the kernels allocate for `cfg` (ring + epilogue buffers, which are
  128 bytes wide for every output dtype)."""
  ring = cfg.stages * (_slot_rows(cfg) * cfg.tile_k + cfg.tile_k * cfg.tile_n) * itemsize
  return ring + 2 * 2 * ROWS * _EPI_BYTES


def fits(cfg: TileConfig, k: int, n: int, itemsize: int = 2) -> bool:
  """Whether `cfg` tiles a product contracting k into n columns and fits in SMEM."""
  return (k % cfg.tile_k == 0 and n % (cfg.tile_n * cfg.cluster) == 0
          and cfg.cluster in (1, 2)
          and cfg.tile_n <= (128 if cfg.pingpong else 256)
          and smem_bytes(cfg, itemsize) + 1024 <= SMEM_BYTES)


def _num_sms(interpret) -> int:
  if interpret:
    return 2
  dev = jax.devices()[0]
  return getattr(dev, "core_count", None) or 132


def _programs(cfg: TileConfig, interpret) -> int:
  """Persistent programs of a launch: one per SM, or per cluster of cfg.cluster SMs."""
  return _num_sms(interpret) // cfg.cluster


def _transforms(minor: int, dtype):
  swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
  swizzle_elems = swizzle // jnp.dtype(dtype).itemsize
  return (plgpu.TilingTransform((8, swizzle_elems)), plgpu.SwizzleTransform(swizzle))


def tile_schedule(group_sizes_G: jax.Array, m: int, merge_tail: int = 0):
  """Row tiles of a ragged-M product, computed by XLA (m % 128 == 0).

  Group g is cut into 128-row tiles from its first row rounded down to a multiple
  of 8 (TMA into swizzled SMEM needs 8-aligned rows); the tail rows past
  sum(group_sizes) into zero tiles (gid == G). Returns sched_4T, T = m/128 + G + 1
  (a bound), with sched[:, t] = (gid, row0, lo, cnt): tile t reads x rows
  [row0, row0 + 128) and stores rows [row0 + lo, row0 + lo + cnt); cnt == 0 marks
  an unused slot. row0 is a multiple of 8 and <= m - 128, so loads stay inside x.

  merge_tail (`TileConfig.merge_tail`): a group's last tile whose rows end within its first
  merge_tail is merged into the group's previous tile when that tile's loads, grown by those
  rows rounded up to 32, stay inside x. Returns sched_5T, whose fifth row `extra` counts the
  merged rows: tile t also stores rows [row0 + 128, row0 + 128 + extra).
  """
  g = group_sizes_G.shape[0]
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  starts = jnp.concatenate([starts, ends[-1:]])  # the tail as pseudo-group G
  ends = jnp.concatenate([ends, jnp.full((1,), m, jnp.int32)])
  base = starts // 8 * 8
  ntiles = jnp.where(ends > starts, pl.cdiv(ends - base, BLOCK), 0)
  if merge_tail:
    last_rows = ends - base - (ntiles - 1) * BLOCK  # rows of a group's last tile
    load = pl.cdiv(last_rows, SWAP_ROWS[0]) * SWAP_ROWS[0]
    merged = ((jnp.arange(g + 1) < g) & (ntiles >= 2) & (last_rows <= merge_tail)
              & (base + (ntiles - 1) * BLOCK + load <= m))
    ntiles = ntiles - merged
  offs_incl = jnp.cumsum(ntiles)
  t = jnp.arange(m // BLOCK + g + 1, dtype=jnp.int32)
  # compare_all: the default searchsorted is a loop, which XLA on GPU runs with a
  # host round trip per iteration (~10 x 30 us here, more than the kernel on small
  # shapes); T x (G + 1) comparisons are one fused kernel.
  gid = jnp.minimum(jnp.searchsorted(offs_incl, t, side="right", method="compare_all"),
                    g).astype(jnp.int32)
  first = base[gid] + (t - (offs_incl - ntiles)[gid]) * BLOCK
  lo_row = jnp.maximum(starts[gid], first)
  used = t < offs_incl[-1]
  cnt = jnp.where(used, jnp.minimum(ends[gid], first + BLOCK) - lo_row, 0)
  row0 = jnp.minimum(first, m - BLOCK)
  rows = [gid, row0, lo_row - row0, cnt]
  if merge_tail:
    last = used & (t == offs_incl[gid] - 1) & merged[gid]
    rows.append(jnp.where(last, ends[gid] - first - BLOCK, 0))
  return jnp.stack(rows).astype(jnp.int32)


class _Ring:
  """The shared-memory ring between the producer and the consumers.

  Shared tiles: both consumers read every step (`consumed` counts two arrivals).
  Ping-pong: each step belongs to the consumer that owns its tile; `produced` has a
  barrier per (owner, slot), because a barrier's wait tracks its phase per warpgroup
  and a consumer must wait on every phase of the barriers it waits on.
  """

  def __init__(self, a_smem, b_smem, produced, consumed, stages, owner=0, multicast=False):
    self.a, self.b = a_smem, b_smem
    self.produced, self.consumed, self.stages = produced, consumed, stages
    self.owner, self.multicast = owner, multicast

  def of(self, owner):
    """The ring as seen by the steps of `owner`'s tiles (ping-pong)."""
    return _Ring(self.a, self.b, self.produced, self.consumed, self.stages, owner,
                 self.multicast)

  def _produced(self, slot):
    return self.produced.at[self.owner * self.stages + slot]

  def produce(self, step, a_src, b_src, a_rows=None):
    """Producer: load one k-step into slot step % stages once its consumers freed it
    (with `a_rows`, only the first a_rows rows of the a slot: a_src is that tall)."""
    slot = lax.rem(step, self.stages)

    @pl.when(step >= self.stages)
    def _():
      plgpu.barrier_wait(self.consumed.at[slot])

    a_dst = self.a.at[slot] if a_rows is None else self.a.at[slot, pl.ds(0, a_rows)]
    # multicast: both CTAs of the cluster load the same rows; each issues half of them
    # into both CTAs' slots, so `consumed` must count the consumers of both.
    plgpu.copy_gmem_to_smem(a_src, a_dst, self._produced(slot),
                            collective_axes="cluster" if self.multicast else None)
    plgpu.copy_gmem_to_smem(b_src, self.b.at[slot], self._produced(slot))
    return step + 1

  def consume(self, step, first, mma, mask_ref, lo, hi, nrows, groups=1):
    """Consumer: one k-step whose rows [lo, hi) of `nrows` count; mma(slot) issues its
    `groups` wgmmas (each its own commit group).

    With a `mask_ref`, rows outside [lo, hi) are zeroed in shared memory before the
    wgmma (their products must not reach the accumulator); with no row in [lo, hi)
    the wgmma is skipped. The previous step's slot is released once its
    wgmmas are done (this step's stay in flight); `first` marks a tile's first
    step, whose predecessor was released at the end of the previous tile.
    """
    slot = lax.rem(step, self.stages)
    plgpu.barrier_wait(self._produced(slot))
    active = hi > lo

    if mask_ref is not None:
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
      mma(slot)
      plgpu.wgmma_wait(groups)

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


def _store_rows(src, lo, cnt, dst):
  """TMA-store rows [lo, lo + cnt) of `src` (unswizzled SMEM, committed) as a ladder of
  power-of-two row slices (TMA boxes have a static size); dst(row, n_rows) is the target."""
  start, size = lo, 1 << (src.shape[0].bit_length() - 1)
  while size >= 1:
    @pl.when(cnt & size != 0)
    def _(start=start, size=size):
      plgpu.copy_smem_to_gmem(src.at[pl.ds(start, size)], dst(start, size))
    start = start + (cnt & size)
    size //= 2


def _store_tile(acc_ref, out, wg, dst, rows, out_dtype):
  """Write a consumer's accumulator (64 or 128 rows x tile_n) to dst(row, n_rows, col, width).

  Each 64-row chunk is stored as 64 x (128 bytes) sub-tiles through the warpgroup's two
  swizzled SMEM slots (one TMA store in flight while the next slot fills). rows=(lo, hi):
  only rows [lo, hi) are stored; a chunk they cover partly is staged unswizzled (TMA
  boxes of static size need arbitrary row offsets) and stored by `_store_rows`. `out` is
  the (swizzled, unswizzled) pair of aliased SMEM buffers.
  """
  swizzled, plain = out
  acc = acc_ref[...].astype(out_dtype)
  epi_n = swizzled.shape[-1]
  n_sub = acc.shape[1] // epi_n
  n_chunks = acc.shape[0] // ROWS

  for h in range(n_chunks):
    part = acc[h * ROWS:(h + 1) * ROWS]

    def all_rows(h=h, part=part):
      for j in range(n_sub):
        # An odd sub-tile count restarts at slot 0 on the next tile: drain first.
        plgpu.wait_smem_to_gmem(1 if n_sub * n_chunks % 2 == 0 else 0, wait_read_only=True)
        slot = (h * n_sub + j) % 2
        swizzled[wg, slot] = part[:, j * epi_n:(j + 1) * epi_n]
        plgpu.commit_smem()
        plgpu.copy_smem_to_gmem(swizzled.at[wg, slot], dst(h * ROWS, ROWS, j * epi_n, epi_n))

    if rows is None:
      all_rows()
      continue
    lo = jnp.clip(rows[0] - h * ROWS, 0, ROWS)
    hi = jnp.clip(rows[1] - h * ROWS, 0, ROWS)
    full = (lo == 0) & (hi == ROWS)
    pl.when(full)(all_rows)

    @pl.when(jnp.logical_not(full) & (hi > lo))
    def _(h=h, part=part, lo=lo, hi=hi):
      for j in range(n_sub):
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        plain[wg, 0] = part[:, j * epi_n:(j + 1) * epi_n]
        plgpu.commit_smem()
        _store_rows(plain.at[wg, 0], lo, hi - lo, lambda r, nr, j=j: dst(h * ROWS + r, nr,
                                                                           j * epi_n, epi_n))
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _store_swapped(acc_ref, out, wg, dst, rows, out_dtype):
  """Write a swap-AB accumulator (columns x rows: [cols, R], R <= 64) transposed: rows
  [lo, hi) of the tile to dst(row, n_rows, col, width). Each 64 columns are written
  transposed into the warpgroup's first swizzled slot, copied through registers to its
  second, unswizzled slot and stored from there by `_store_rows`: a TMA store at a dynamic
  row offset needs an unswizzled buffer, and Mosaic writes transposed only into swizzled
  ones."""
  swizzled, plain = out
  acc = acc_ref[...].astype(out_dtype)
  cols, r = acc.shape
  assert swizzled.shape[-2:] == (ROWS, ROWS) and r <= ROWS, (swizzled.shape, r)  # 16-bit
  staged, unswizzled = swizzled.at[wg, 0], plain.at[wg, 1]
  lo, hi = rows
  for j in range(cols // ROWS):
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    staged.at[pl.ds(0, r)].T[...] = acc[j * ROWS:(j + 1) * ROWS]
    plgpu.commit_smem()
    unswizzled[...] = plgpu.load(staged, layout=plgpu.Layout.WGMMA)
    plgpu.commit_smem()
    _store_rows(unswizzled, lo, hi - lo, lambda row, nr, j=j: dst(row, nr, j * ROWS, ROWS))
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _persistent_call(coords, produce_unit, consume_unit, unit_steps, *, num_units, a_block,
                     b_block, dtype, out_shape, out_dtype, cfg, interpret, args, forms,
                     unit_form=None):
  """Launch one CTA per SM: warpgroup 2 produces, warpgroups 0 and 1 consume.

  Shared tiles (cfg.pingpong off): each consumer computes 64 of the tile's 128 rows.
  With cfg.alternate_epilogues the consumers store their tiles in turns (consumer 0's
  tile i, then consumer 1's tile i, then consumer 0's tile i + 1, ...; two barriers).
  Both would otherwise finish a tile's wgmmas together and leave the tensor cores idle
  for the whole epilogue. Taking turns, consumer 1 starts its first epilogue one
  epilogue late, and from then on runs its last wgmmas of each tile alone while
  consumer 0 stores, and stores while consumer 0 starts the next tile, so one
  consumer's epilogue overlaps the other's wgmmas; the ring's depth bounds how far
  apart they run. Measured on an H200: 0-2% faster on Mixtral's six calls and Qwen3's
  wgrad, within +-2% on Qwen3's forward and dgrad (benchmarks/RESULTS.md).

  Ping-pong (CUTLASS's name): consumer c computes the SM's tiles i with i % 2 == c,
  all 128 rows of each. The producer still loads the tiles in order, so consumer 1
  starts a tile as consumer 0 ends its own, and each epilogue runs under the other
  consumer's wgmmas, however long the tile. Its 128 x 128 tiles load a third more bytes
  per flop than 128 x 256; on an H200 it won 2-3% on three of Qwen3's six calls and lost
  8% on one (benchmarks/RESULTS.md), so the tile table picks it per call.

  2-CTA clusters (cfg.cluster=2): the two CTAs of a cluster take the same units, each its
  own column tile of a pair, and load the rows they share once (multicast); `consumed`
  then counts the consumers of both CTAs, and neither CTA exits before the other is done
  with its barriers. Ping-pong in clusters loads as many bytes per flop as the shared
  128 x 256 tile; on an H200 it won 0-4% on four of Qwen3's six calls.

  coords(refs, lin) -> info reads where output tile `lin` lies (once per tile and warpgroup);
  produce_unit(refs, ring, info, step) -> step issues the tile's loads;
  consume_unit(refs, ring, part, form, accs, store, info, step) -> step runs this
  consumer's wgmmas of the tile (part: None in ping-pong, where it owns the tile, else its
  warpgroup index, the half of the tile it shares) into accumulators of the shapes
  forms[form] (a tuple of shapes), and calls store(*parts) exactly once, each part
  (acc_ref, dst, rows, swapped) stored by `_store_tile` or `_store_swapped`;
  unit_steps(info) is the tile's number of ring steps; unit_form(info) picks the form of a
  tile (the first when None).
  """
  stages = cfg.stages
  epi_n = _EPI_BYTES // jnp.dtype(out_dtype).itemsize
  pingpong = cfg.pingpong
  alternate = cfg.alternate_epilogues and not pingpong
  multicast = cfg.cluster > 1
  # A slot is refilled (in both CTAs, multicast) once the consumers of both CTAs freed it.
  consumers_per_step = 1 if pingpong else 2
  consumed = (plgpu.ClusterBarrier(collective_axes=("cluster",), num_arrivals=consumers_per_step,
                                   num_barriers=stages)
              if multicast else plgpu.Barrier(num_arrivals=consumers_per_step, num_barriers=stages))
  # multicast: no CTA may exit while the other still arrives on its barriers.
  done = {"done": plgpu.ClusterBarrier(collective_axes=("cluster",), num_arrivals=2)} if multicast else {}

  def body(*refs):
    @functools.partial(
        pl.run_scoped,
        a_smem=plgpu.SMEM((stages, *a_block), dtype, transforms=_transforms(a_block[1], dtype)),
        b_smem=plgpu.SMEM((stages, *b_block), dtype, transforms=_transforms(b_block[1], dtype)),
        out_smem=plgpu.RefUnion(
            plgpu.SMEM((2, 2, ROWS, epi_n), out_dtype, transforms=_transforms(epi_n, out_dtype)),
            # Same leading (warpgroup, slot) dims: each ref of a union starts at
            # offset 0, so plain[wg, 0] lies inside swizzled[wg] and never in the
            # other warpgroup's half.
            plgpu.SMEM((2, 2, ROWS, epi_n), out_dtype)),
        produced=plgpu.Barrier(num_arrivals=2, num_barriers=(2 if pingpong else 1) * stages),
        consumed=consumed,
        stored=plgpu.Barrier(num_arrivals=1, num_barriers=2),  # consumer wg's epilogue done
        **done,
        collective_axes="wg",
    )
    def _scope(a_smem, b_smem, out_smem, produced, consumed, stored, done=None):
      ring = _Ring(a_smem, b_smem, produced, consumed, stages, multicast=multicast)
      wg = lax.axis_index("wg")
      sm = lax.axis_index("sm")
      nsm = lax.axis_size("sm")
      n_local = lax.div(num_units - sm + nsm - 1, nsm)

      @pl.when(wg == 2)
      def _producer():
        plgpu.set_max_registers(40, action="decrease")

        def unit(i, step):
          return produce_unit(refs, ring.of(lax.rem(i, 2)) if pingpong else ring,
                              coords(refs, sm + i * nsm), step)

        lax.fori_loop(0, n_local, unit, jnp.int32(0))

      @pl.when(wg < 2)
      def _consumers():
        plgpu.set_max_registers(232, action="increase")

        def store(*parts):
          if alternate:
            plgpu.barrier_wait(stored.at[1 - wg])
          for acc_ref, dst, rows, swapped in parts:
            (_store_swapped if swapped else _store_tile)(acc_ref, tuple(out_smem), wg, dst,
                                                         rows, out_dtype)
          if alternate:
            plgpu.barrier_arrive(stored.at[wg])

        if alternate:  # consumer 0's first turn needs no wait
          pl.when(wg == 1)(lambda: plgpu.barrier_arrive(stored.at[1]))

        def run(info, step, my_ring, part):
          def form_run(form, step):
            return pl.run_scoped(
                lambda *accs: consume_unit(refs, my_ring, part, form, accs, store, info, step),
                *(plgpu.ACC(shape, jnp.float32) for shape in forms[form]))
          if unit_form is None:
            return form_run(0, step)
          return lax.switch(unit_form(info),
                            [functools.partial(form_run, f) for f in range(len(forms))], step)

        if pingpong:
          def own_tile(j, step):
            i = 2 * j + wg
            # The ring steps of the other consumer's tile just before this one.
            prev = jnp.maximum(i - 1, 0)
            step = step + jnp.where(i >= 1, unit_steps(coords(refs, sm + prev * nsm)), 0)
            return run(coords(refs, sm + i * nsm), step, ring.of(wg), None)

          lax.fori_loop(0, lax.div(n_local - wg + 1, 2), own_tile, jnp.int32(0))
        else:
          lax.fori_loop(0, n_local,
                        lambda i, step: run(coords(refs, sm + i * nsm), step, ring, wg),
                        jnp.int32(0))
        plgpu.wait_smem_to_gmem(0, wait_read_only=True)
        if multicast:
          plgpu.barrier_arrive(done)
          plgpu.barrier_wait(done)

  kw = dict(
      out_type=jax.ShapeDtypeStruct(out_shape, out_dtype),
      grid=(_programs(cfg, interpret),),  # "sm" counts clusters of cfg.cluster CTAs
      grid_names=("sm",),
      num_threads=3,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )
  if multicast:
    kw.update(cluster=(cfg.cluster,), cluster_names=("cluster",))
  if interpret:
    # Fresh buffers start as NaN, so an output element the kernel never writes
    # shows up in the tests; out-of-bounds reads raise.
    kw["interpret"] = plgpu.InterpretGPUParams(uninitialized_memory="nan")
  return plgpu.kernel(body, **kw)(*args)


def _snake(lin, rows, cols, cfg: TileConfig):
  """(row, column) tile of unit `lin` of a rows x cols tile grid, in cfg's planar-snake
  order. With 2-CTA clusters a unit is a pair of neighbouring column tiles, and this CTA
  takes its own of the pair."""
  r, c = plgpu.planar_snake(lin, (rows, cols // cfg.cluster), cfg.grid_minor_dim,
                            cfg.grid_tile_width)
  if cfg.cluster > 1:
    c = c * cfg.cluster + lax.axis_index("cluster")
  return r, c


def _check(cfg: TileConfig, itemsize: int):
  if cfg.cluster not in (1, 2):
    raise ValueError(f"{cfg}: cluster must be 1 or 2")
  if cfg.merge_tail not in (0, *SWAP_ROWS):
    raise ValueError(f"{cfg}: merge_tail must be 0 (off) or one of {SWAP_ROWS} (the most rows "
                     "merged)")
  for flag in ("swap_ab", "merge_tail"):
    if getattr(cfg, flag) and not cfg.pingpong and cfg.tile_n < 2 * ROWS:
      raise ValueError(f"{cfg}: {flag} with shared tiles needs tile_n >= 128 (each consumer's "
                       f"half of the columns is a 64-row wgmma M); got tile_n={cfg.tile_n}")
  if cfg.pingpong and cfg.tile_n > 128:
    raise ValueError(f"{cfg}: pingpong=True needs tile_n <= 128 (each consumer holds a "
                     f"128 x tile_n fp32 accumulator); got tile_n={cfg.tile_n}")
  need = smem_bytes(cfg, itemsize) + 1024
  if need > SMEM_BYTES:
    raise ValueError(f"{cfg} needs {need} bytes of shared memory (> {SMEM_BYTES}); "
                     "use fewer stages or a smaller tile_n")


def _is_half(lo, cnt):
  """Whether a tile's rows [lo, lo + cnt) lie in one 64-row half of it."""
  return (cnt > 0) & ((lo >= ROWS) | (lo + cnt <= ROWS))


def _swap_rows(lo, cnt):
  """0, or i where a tile's rows [lo, lo + cnt) end within its first SWAP_ROWS[i - 1] rows."""
  return jnp.where((cnt > 0) & (lo + cnt <= SWAP_ROWS[-1]),
                   pl.cdiv(lo + cnt, SWAP_ROWS[0]), 0)


def _wave(lin, num, programs):
  """(w, first, size): the wave of kernel unit lin. Program p (an SM, or a cluster)
  computes units p, p + programs, ... of `num`, so wave w is the `size` units from
  `first` = w * programs (the last wave may be partial). The unit orders below permute
  units within their wave, so the SMs' joint working set in L2 is unchanged."""
  w = lax.div(lin, programs)
  first = w * programs
  return w, first, jnp.minimum(programs, num - first)


def _balanced_order(sched, units, cfg: TileConfig, programs: int, swap=False):
  """order[lin]: the planar-snake unit that kernel unit lin computes, for half_tiles,
  swap_ab and merge_tail, so the statically assigned programs (SMs or clusters) finish
  together. Light units cost less than a full tile: the half tiles (half_tiles) and the
  swapped ones (`swap`); heavy ones more: the merged tiles (a merge_tail schedule's `extra`).

  Units move only within their wave (`_wave`). Counted from the last wave backwards, each
  class is dealt one unit per program in turn, going down from program P - 1, in two deals:
  the light one counts the slots the partial last wave leaves empty as its first units, and
  the heavy one starts with the last wave's heavy units (at programs 0 and down), so the
  programs with one more heavy unit are those with one more empty slot or light unit. A
  wave's heavy units take their deal's places (each program gets as many, +-1), its light
  ones the next free places down. One deal for both classes (before session 28) gave a
  program with one more merged tile one light unit fewer; this one loads the programs about
  as evenly as a greedy deal by cost (session 28's merge_balance_model.py), which would be a
  loop: on GPU, host round trips.
  """
  num = units[0] * units[1]
  lin = jnp.arange(num, dtype=jnp.int32)
  t, _ = jax.vmap(lambda i: plgpu.planar_snake(i, units, cfg.grid_minor_dim,
                                               cfg.grid_tile_width))(lin)
  lo, cnt = sched[2], sched[3]
  light = jnp.zeros(lo.shape, bool)
  if cfg.half_tiles:
    light = light | _is_half(lo, cnt)
  if swap:
    light = light | (_swap_rows(lo, cnt) > 0)
  heavy = sched[4] > 0 if sched.shape[0] == 5 else jnp.zeros(lo.shape, bool)
  hl = jnp.stack([heavy[t], light[t]]).astype(jnp.int32)
  _, wave0, size = _wave(lin, num, programs)
  last = wave0 + size - 1
  incl = jnp.cumsum(hl, axis=1)
  excl = incl - hl
  (rank_h, rank_l), (nh, nl) = excl - excl[:, wave0], incl[:, last] - excl[:, wave0]
  later_h, later_l = incl[:, -1:] - incl[:, last]  # in the waves after lin's
  last_wave = (num - 1) // programs * programs
  heavy_in_last = incl[0, -1] - excl[0, last_wave]
  top_h = (heavy_in_last - 1 - later_h) % programs % size  # the wave's first heavy place
  top_l = (num - last_wave - 1 - later_l) % programs % size  # and its first light one
  # Places counted down from top_l: the heavy units take [s, s + nh) (cyclic), the light
  # ones, then the rest, the free places from 0 up.
  is_h, is_l = hl == 1
  s = (top_l - top_h) % size
  free = jnp.where(is_l, rank_l, lin - wave0 - rank_h - rank_l + nl)
  over = s + nh - size
  d = jnp.where(is_h, (s + rank_h) % size,
                jnp.where(over > 0, over + free, free + jnp.where(free >= s, nh, 0)))
  return jnp.zeros((num,), jnp.int32).at[wave0 + (top_l - d) % size].set(lin)


def _dealt(lin, num, programs):
  """The unit (in heaviest-first order) that kernel unit lin computes.

  Dealing the sorted units forwards in even waves (`_wave`) and backwards in odd ones
  (a boustrophedon deal) keeps every program's total within about one unit's cost of
  the others'; dealt round-robin, wgrad's units of unequal cost (a group's steps)
  leave one SM 4-11% more work than the mean on Qwen3's Dirichlet(1) groups.
  """
  w, first, size = _wave(lin, num, programs)
  j = lin - first
  return first + jnp.where(lax.rem(w, 2) == 0, j, size - 1 - j)


def ragged_mm(x_MK, w_GKN, group_sizes_G, *, cfg: TileConfig, transpose_rhs=False,
              out_dtype=None, interpret=False, sched=None):
  """y[M,N] = x[M,K] @ w[g] (w_GKN: [G,K,N]) or x @ w[g]^T (w: [G,N,K]) per group.

  Needs M % 128 == 0, K % tile_k == 0, N % (tile_n * cluster) == 0 (the wrapper pads M).
  `sched`: tile_schedule(group_sizes_G, M, merged_rows(cfg, out_dtype)) when the caller
  already has it (forward and dgrad share one when their tiles merge alike).
  """
  m, k = x_MK.shape
  g = w_GKN.shape[0]
  n = w_GKN.shape[1] if transpose_rhs else w_GKN.shape[2]
  kk = w_GKN.shape[2] if transpose_rhs else w_GKN.shape[1]
  assert kk == k, (x_MK.shape, w_GKN.shape, transpose_rhs)
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  tn, tk = cfg.tile_n, cfg.tile_k
  _check(cfg, x_MK.dtype.itemsize)
  assert m % BLOCK == 0 and k % tk == 0 and n % (tn * cfg.cluster) == 0, (m, k, n, cfg)
  k_iters, grid_n = k // tk, n // tn
  merge = merged_rows(cfg, out_dtype)
  if sched is None:
    sched = tile_schedule(group_sizes_G, m, merge)
  assert sched.shape[0] == (5 if merge else 4), (sched.shape, cfg)
  num_tiles = sched.shape[1]
  units = (num_tiles, grid_n // cfg.cluster)
  swap = cfg.swap_ab and out_dtype.itemsize == 2  # `_store_swapped` stores 64-column chunks
  # The accumulator forms a tile may take (`_persistent_call`): all its rows (a consumer's
  # half of them in shared tiles), one 64-row half (ping-pong half tiles), swap-AB with its
  # rows as wgmma's N (a consumer's columns as M: the whole tile_n in ping-pong), or all its
  # rows and a merged tail's rows swapped beside them.
  kinds = (["rows"] + (["half"] if cfg.half_tiles and cfg.pingpong else [])
           + (list(SWAP_ROWS) if swap else [])
           + [("merged", r) for r in SWAP_ROWS if r <= merge])
  cols = tn if cfg.pingpong else tn // 2
  rows_acc = (BLOCK if cfg.pingpong else ROWS, tn)
  forms = tuple(((rows_acc,) if kd == "rows" else ((ROWS, tn),) if kd == "half" else
                 ((cols, kd),) if kd in SWAP_ROWS else (rows_acc, (cols, kd[1])))
                for kd in kinds)
  # half_tiles, swap_ab or merge_tail: unit lin of the kernel is unit order[lin] of the
  # planar-snake order
  reorder = cfg.half_tiles or swap or merge
  extra = (_balanced_order(sched, units, cfg, _programs(cfg, interpret), swap),) \
      if reorder else ()
  slot_rows = _slot_rows(cfg)

  def coords(refs, lin):
    sched_gmem = refs[0]
    if reorder:
      lin = refs[3][lin]
    t, ni = _snake(lin, num_tiles, grid_n, cfg)
    gid, row0, lo, cnt = (sched_gmem[r, t] for r in range(4))
    tail = sched_gmem[4, t] if merge else jnp.int32(0)
    row0 = pl.multiple_of(row0, 8)
    n_steps = jnp.where((cnt > 0) & (gid < g), k_iters, 0)
    return ni, gid, row0, lo, cnt, tail, n_steps

  def unit_form(info):
    _, _, _, lo, cnt, tail, _ = info
    form = jnp.int32(0)
    if "half" in kinds:
      form = jnp.where(_is_half(lo, cnt), kinds.index("half"), form)
    if swap:
      r = _swap_rows(lo, cnt)
      form = jnp.where(r > 0, kinds.index(SWAP_ROWS[0]) + r - 1, form)
    if merge:
      r = pl.cdiv(tail, SWAP_ROWS[0])
      form = jnp.where(tail > 0, kinds.index(("merged", SWAP_ROWS[0])) + r - 1, form)
    return form

  def produce_unit(refs, ring, info, step):
    _, x_gmem, w_gmem = refs[:3]
    ni, gid, row0, lo, cnt, tail, n_steps = info
    w_g = w_gmem.at[jnp.minimum(gid, g - 1)]
    # The rows a tile multiplies: a swap-AB tile only its own, a merged one its tail's too.
    n_rows = jnp.int32(BLOCK)
    if swap:
      r = _swap_rows(lo, cnt)
      n_rows = jnp.where(r > 0, r * SWAP_ROWS[0], n_rows)
    if merge:
      n_rows = n_rows + pl.cdiv(tail, SWAP_ROWS[0]) * SWAP_ROWS[0]
    heights = ((BLOCK,) + (SWAP_ROWS if swap else ())
               + tuple(BLOCK + r for r in SWAP_ROWS if r <= merge))

    def k_step(ki, step):
      w_src = (w_g.at[pl.ds(ni * tn, tn), pl.ds(ki * tk, tk)] if transpose_rhs
               else w_g.at[pl.ds(ki * tk, tk), pl.ds(ni * tn, tn)])
      if len(heights) == 1:
        return ring.produce(step, x_gmem.at[pl.ds(row0, BLOCK), pl.ds(ki * tk, tk)], w_src)
      for r in heights:
        @pl.when(n_rows == r)
        def _(r=r):
          ring.produce(step, x_gmem.at[pl.ds(row0, r), pl.ds(ki * tk, tk)], w_src,
                       a_rows=None if r == slot_rows else r)
      return step + 1

    return lax.fori_loop(0, n_steps, k_step, step)

  def consume_unit(refs, ring, part, form, accs, store, info, step):
    o_gmem = refs[-1]
    ni, _, row0, lo, cnt, tail, n_steps = info
    kind = kinds[form]
    c0 = 0 if part is None else part * cols  # this consumer's columns of a swapped product

    def dst(off, c0):
      return lambda r, nr, col, width: o_gmem.at[pl.ds(row0 + off + r, nr),
                                                 pl.ds(ni * tn + c0 + col, width)]

    def swapped(acc_ref, first, r):
      """mma(slot): acc[cols, r] += w_block[:, my columns]^T @ x[rows first..first + r]^T."""
      w_op = ((lambda slot: ring.b.at[slot, pl.ds(c0, cols)]) if transpose_rhs
              else (lambda slot: ring.b.at[slot, :, pl.ds(c0, cols)].transpose((1, 0))))
      return lambda slot: plgpu.wgmma(acc_ref, w_op(slot),
                                      ring.a.at[slot, pl.ds(first, r)].transpose((1, 0)))

    if kind in SWAP_ROWS:
      mma = swapped(accs[0], 0, kind)
      a, b, rows = lo, lo + cnt, kind
      parts = [(accs[0], dst(0, c0), (a, b), True)]
    else:
      rows = accs[0].shape[0]
      off = (jnp.where(lo >= ROWS, ROWS, 0) if kind == "half"
             else 0 if part is None else part * ROWS)
      a = jnp.clip(lo - off, 0, rows)
      b = jnp.clip(lo + cnt - off, 0, rows)
      w_op = ((lambda slot: ring.b.at[slot].transpose((1, 0))) if transpose_rhs
              else (lambda slot: ring.b.at[slot]))
      mma = lambda slot: plgpu.wgmma(accs[0], ring.a.at[slot, pl.ds(off, rows)], w_op(slot))
      parts = [(accs[0], dst(off, 0), (a, b), False)]
    groups = 1
    if isinstance(kind, tuple):  # merged: the tail's rows from the same k-steps, swapped
      mma_tail = swapped(accs[1], BLOCK, kind[1])
      mma = lambda slot, mma_rows=mma: (mma_rows(slot), mma_tail(slot))
      parts.append((accs[1], dst(BLOCK, c0), (0, tail), True))
      groups = 2
    step = lax.fori_loop(
        0, n_steps, lambda ki, step: ring.consume(step, ki == 0, mma, None, a, b, rows, groups),
        step)
    ring.finish(step, n_steps > 0)
    store(*parts)  # stores nothing when a == b (an unused slot, cnt == 0)
    return step

  def unit_steps(info):
    return info[-1]

  return _persistent_call(
      coords, produce_unit, consume_unit, unit_steps, num_units=units[0] * units[1],
      a_block=(slot_rows, tk), b_block=(tn, tk) if transpose_rhs else (tk, tn),
      dtype=x_MK.dtype, out_shape=(m, n), out_dtype=out_dtype, cfg=cfg,
      interpret=interpret, args=(sched, x_MK, w_GKN, *extra), forms=forms,
      unit_form=unit_form if len(forms) > 1 else None)


def ragged_contract(x_MK, dy_MN, group_sizes_G, *, cfg: TileConfig, out_dtype=None,
                    interpret=False):
  """dw[g] = x[rows of g]^T @ dy[rows of g]  ->  [G, K, N]; empty groups give 0.

  tile_k rows of the group are contracted per step, from its first row rounded down to
  a multiple of 8 (as the forward's tiles; rounding down to tile_k would cost half a
  step more per tile on average), the last step pulled back inside x. Needs
  M % tile_k == 0, K % 128 == 0 and N % (tile_n * cluster) == 0 (the wrapper pads M and K).
  """
  m, k = x_MK.shape
  m2, n = dy_MN.shape
  assert m == m2
  g = group_sizes_G.shape[0]
  out_dtype = jnp.dtype(out_dtype or x_MK.dtype)
  cfg = dataclasses.replace(cfg, merge_tail=0)  # forward/dgrad only: no taller row slots
  tn, tk = cfg.tile_n, cfg.tile_k
  _check(cfg, x_MK.dtype.itemsize)
  assert m % tk == 0 and k % BLOCK == 0 and n % (tn * cfg.cluster) == 0, (m, k, n, cfg)
  sizes = jnp.maximum(group_sizes_G.astype(jnp.int32), 0)
  ends = jnp.minimum(jnp.cumsum(sizes), m).astype(jnp.int32)
  starts = jnp.concatenate([jnp.zeros((1,), jnp.int32), ends[:-1]])
  base = starts // 8 * 8
  nblk = jnp.where(ends > starts, pl.cdiv(ends - base, tk), 0)
  # A group's units cost its number of steps: the groups go heaviest first, and the
  # units are dealt to the SMs by `_dealt` (column 4: the group's index in dw).
  heavy = jnp.argsort(-nblk, stable=True)
  info_5G = jnp.stack([starts, ends, nblk, base, jnp.arange(g)])[:, heavy].astype(jnp.int32)
  grid_m, grid_n = k // BLOCK, n // tn
  per_group = grid_m * grid_n // cfg.cluster
  programs = _programs(cfg, interpret)

  def step_row(first, j):
    """x row of a group's step j: the last step of a group ending near M is pulled back."""
    return pl.multiple_of(jnp.minimum(first + j * tk, m - tk), 8)

  def coords(refs, lin):
    info_gmem = refs[0]
    q = _dealt(lin, g * per_group, programs)
    r = lax.div(q, per_group)
    mi, ni = _snake(lax.rem(q, per_group), grid_m, grid_n, cfg)
    return info_gmem[4, r], mi, ni, [info_gmem[i, r] for i in range(4)]

  def produce_unit(refs, ring, info, step):
    _, x_gmem, dy_gmem, _ = refs
    _, mi, ni, (_, _, count, first) = info

    def k_step(j, step):
      rows = pl.ds(step_row(first, j), tk)
      return ring.produce(step, x_gmem.at[rows, pl.ds(mi * BLOCK, BLOCK)],
                          dy_gmem.at[rows, pl.ds(ni * tn, tn)])

    return lax.fori_loop(0, count, k_step, step)

  def consume_unit(refs, ring, part, form, accs, store, info, step):
    o_gmem = refs[-1]
    gi, mi, ni, (start, end, count, first) = info
    acc_ref, = accs
    cols = acc_ref.shape[0]
    off = 0 if part is None else part * cols
    x_cols = lambda slot: ring.a.at[slot, :, pl.ds(off, cols)]
    mma = lambda slot: plgpu.wgmma(acc_ref, x_cols(slot).transpose((1, 0)), ring.b.at[slot])

    def k_step(j, step):
      # step j counts rows [first + j * tk, +tk) of the group, read from x at `row`
      row = step_row(first, j)
      lo = jnp.clip(jnp.maximum(start, first + j * tk) - row, 0, tk)
      hi = jnp.clip(end - row, 0, tk)
      return ring.consume(step, j == 0, mma, x_cols, lo, hi, tk)

    step = lax.fori_loop(0, count, k_step, step)
    ring.finish(step, count > 0)
    store((acc_ref, lambda r, nr, col, width: o_gmem.at[gi, pl.ds(mi * BLOCK + off + r, nr),
                                                        pl.ds(ni * tn + col, width)],
           None, False))
    return step

  def unit_steps(info):
    _, _, _, (_, _, count, _) = info
    return count

  return _persistent_call(
      coords, produce_unit, consume_unit, unit_steps, num_units=g * per_group,
      a_block=(tk, BLOCK), b_block=(tk, tn), dtype=x_MK.dtype, out_shape=(g, k, n),
      out_dtype=out_dtype, cfg=cfg, interpret=interpret, args=(info_5G, x_MK, dy_MN),
      forms=(((BLOCK if cfg.pingpong else ROWS, tn),),))
