"""Autotune the grouped GEMM tiles for one MoE shape on the device; rewrite tiles.json.

  python -m moejax.kernels.grouped_gemm.autotune --m 32768 --e 8 --k 4096 --n 28672

Times every candidate tile of the three kernel calls a grouped_gemm of x[m,k]
@ w[e,k,n] makes (fwd, dgrad with k and n swapped, wgrad) on Dirichlet(alpha) group
sizes (seed 0; alpha=1 is strongly imbalanced, alpha=100 near-equal as in a step with
balanced routing), checks that every candidate agrees with the first (the benchmark
checks the stored winners against an fp32 reference), and stores the fastest one
per call (forward and dgrad: the winner also tried with swap-AB remainder tiles, then
with merged tails of up to 64 and of up to 32 rows).
`--dry-run` prints without writing.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time

import numpy as np
import jax
import jax.numpy as jnp

from moejax.kernels.grouped_gemm import configs, mosaic


def seconds_per_call(fn, *args, min_time=0.2, max_calls=50, reps=5):
  """Device seconds per call: `calls` back-to-back calls with one wait at the end
  (dispatch overlaps the device, as in a training step), median of `reps` runs.

  Timing single calls with a wait each would add the host's dispatch latency
  (~50-100 us) to every call, which on sub-millisecond kernels skews comparisons
  with CUDA-event timings.
  """
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  jax.block_until_ready(fn(*args))
  calls = int(max(1, min(max_calls, min_time / max(time.perf_counter() - t0, 1e-6))))
  ts = []
  for _ in range(reps):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    ts.append((time.perf_counter() - t0) / calls)
  return float(np.median(ts))


def candidates(k, n, quick=False, half_tiles=False):
  """Tile configs that fit a kernel call contracting k into n columns; with half_tiles
  (forward and dgrad: `ragged_mm`) each also with `TileConfig.half_tiles`."""
  out = []
  for tn, st, gw, gm, pp, cl, half in itertools.product(
      (256, 128), (3, 4, 5, 6), (4, 8, 16), (0, 1), (False, True), (1, 2),
      (False, True) if half_tiles else (False,)):
    cfg = mosaic.TileConfig(tile_n=tn, tile_k=64, stages=st, grid_tile_width=gw,
                            grid_minor_dim=gm, pingpong=pp, cluster=cl, half_tiles=half)
    if mosaic.fits(cfg, k, n):
      out.append(cfg)
  if quick:  # per form (shared or ping-pong, 2-CTA cluster or not, half tiles or not): its
    # widest tile, deepest ring, every tile order
    form = lambda c: (c.pingpong, c.cluster, c.half_tiles)
    best = {}
    for c in out:
      best[form(c)] = max(best.get(form(c), (0, 0)), (c.tile_n, c.stages))
    out = [c for c in out if (c.tile_n, c.stages) == best[form(c)]]
  return out


def dirichlet_sizes(m, e, seed=0, alpha=1.0) -> np.ndarray:
  """Imbalanced group sizes summing to m (Dirichlet(alpha), seed fixed)."""
  p = np.random.default_rng(seed).dirichlet([alpha] * e)
  s = np.floor(p * m).astype(np.int64)
  s[np.argmax(s)] += m - s.sum()
  return s.astype(np.int32)


def inputs(m, e, k, n, alpha=1.0):
  """(group sizes, x [m,k], dy [m,n], w [e,k,n]) in bf16, seed 0: the tuning data."""
  kx, kw, kd = jax.random.split(jax.random.key(0), 3)
  return (jnp.asarray(dirichlet_sizes(m, e, alpha=alpha)), jax.random.normal(kx, (m, k), jnp.bfloat16),
          jax.random.normal(kd, (m, n), jnp.bfloat16),
          (jax.random.normal(kw, (e, k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16))


def kernel_call(op, cfg, gs, x, dy, w):
  """(jitted kernel call, its args) for one op of a grouped GEMM x @ w[g]."""
  if op == "fwd":
    return jax.jit(lambda a, b: mosaic.ragged_mm(a, b, gs, cfg=cfg)), (x, w)
  if op == "dgrad":
    return jax.jit(lambda a, b: mosaic.ragged_mm(a, b, gs, cfg=cfg, transpose_rhs=True)), (dy, w)
  return jax.jit(lambda a, b: mosaic.ragged_contract(a, b, gs, cfg=cfg)), (x, dy)


def tune_shape(m, e, k, n, quick=False, alpha=1.0, log=print):
  data = inputs(m, e, k, n, alpha)
  flops = 2.0 * m * k * n
  entries = []
  # (op, its contracting dim, its output dim): dgrad contracts n into k.
  calls = [("fwd", k, n), ("dgrad", n, k), ("wgrad", k, n)]
  for op, ck, cn in calls:
    best = None
    ref_out = None  # candidates must agree with the first; the benchmark checks vs fp32

    def timed(cfg):
      """TFLOP/s of cfg (logged), or None when it fails or disagrees with the first."""
      nonlocal ref_out
      try:
        fn, args = kernel_call(op, cfg, *data)
        out = fn(*args)
        if ref_out is None:
          ref_out = out
        err = float(jnp.linalg.norm((out.astype(jnp.float32) - ref_out.astype(jnp.float32)))
                    / jnp.linalg.norm(ref_out.astype(jnp.float32)))
        if not np.isfinite(err) or err > 1e-2:
          log(f"{op} {cfg}: wrong (rel err {err:.2e}), skipped")
          return None
        t = seconds_per_call(fn, *args, min_time=0.05, reps=3)
      except Exception as ex:  # noqa: BLE001 - shared-memory overflow etc.
        log(f"{op} {cfg}: failed: {str(ex).splitlines()[0][:160]}")
        return None
      tf = flops / t / 1e12
      log(f"{op} m={m} g={e} k={ck} n={cn} {cfg}: {tf:.0f} TFLOP/s")
      return tf

    for cfg in candidates(ck, cn, quick, half_tiles=op != "wgrad"):
      tf = timed(cfg)
      if tf is not None and (best is None or tf > best[1]):
        best = (cfg, tf)
    # swap-AB remainder tiles and merged tails of up to 64 or 32 rows (forward and dgrad)
    # change little but the groups' last tiles: tried on the winner only (merged tails with
    # as many ring stages as still fit), which keeps the tuning time about as it was.
    if best is not None and op != "wgrad":
      swapped = dataclasses.replace(best[0], swap_ab=True)
      tf = timed(swapped)
      if tf is not None and tf > best[1]:
        best = (swapped, tf)
      unmerged = best[0]
      for rows in mosaic.SWAP_ROWS[::-1]:
        cfg = dataclasses.replace(unmerged, merge_tail=rows)
        while not mosaic.fits(cfg, ck, cn) and cfg.stages > 2:
          cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
        tf = timed(cfg) if mosaic.fits(cfg, ck, cn) else None
        if tf is not None and tf > best[1]:
          best = (cfg, tf)
    if best is not None:
      entries.append({"op": op, "m": m, "g": e, "k": ck, "n": cn,
                      "cfg": dataclasses.asdict(best[0]), "tflops": round(best[1], 1),
                      "alpha": alpha, "device": jax.devices()[0].device_kind})
  return entries


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--m", type=int, required=True, help="rows (tokens * topk)")
  ap.add_argument("--e", type=int, required=True, help="experts (groups)")
  ap.add_argument("--k", type=int, required=True, help="contracting dim of fwd")
  ap.add_argument("--n", type=int, required=True, help="output dim of fwd")
  ap.add_argument("--quick", action="store_true", help="fewer candidates")
  ap.add_argument("--alpha", type=float, default=1.0,
                  help="Dirichlet concentration of the group sizes (100: near-equal groups)")
  ap.add_argument("--dry-run", action="store_true", help="print, do not write")
  a = ap.parse_args()
  if jax.devices()[0].platform != "gpu":
    raise SystemExit("autotune needs a Hopper GPU (found "
                     f"{jax.devices()[0].platform}); run it on the device")
  entries = tune_shape(a.m, a.e, a.k, a.n, quick=a.quick, alpha=a.alpha)
  for e in entries:
    print("BEST", e)
  if not a.dry_run:
    configs.write_entries(entries)
    print("wrote", configs.TABLE_PATH)


if __name__ == "__main__":
  main()
