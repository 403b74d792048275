"""Grouped GEMM benchmark on the device: our Pallas kernels vs baselines.

For each MoE shape (M = tokens*topk, E, H, F) and orientation (fc1: H -> 2F,
fc2: F -> H) it prints forward and forward+backward TFLOP/s of
  pallas   moejax.kernels grouped_gemm(impl="pallas")
  pallas_eq  the same on equal groups (m/E rows each): the gap to the einsum that is
           not the part-filled last tile of each group
  xla      jax.lax.ragged_dot
  tokamax  tokamax.ragged_dot (when importable)
  torch    torch._grouped_mm (CUTLASS), autograd for fwd+bwd
  einsum   batched einsum with equal groups (the ceiling)
on the same Dirichlet-imbalanced group sizes (seed fixed); all but xla (slow: a few calls once)
are timed in turns (--turns times, medians), each for --min-time seconds of back-to-back calls, so a
drift of the power-limited clock hits them alike; plus the relative
error of our fwd / dgrad / wgrad against an fp32 reference (HIGHEST precision
per-group matmuls) on fresh random inputs, with the device memory poisoned by
NaNs first so unwritten output elements show up.

  python benchmarks/grouped_gemm.py [--shapes mixtral,qwen3,dsv3] [--skip-xla]
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np
import jax
import jax.numpy as jnp

from moejax.kernels.grouped_gemm import api, grouped_gemm, mosaic
from moejax.kernels.grouped_gemm.autotune import dirichlet_sizes, seconds_per_call

SHAPES = {
    "mixtral": (32768, 8, 4096, 14336),
    "qwen3": (65536, 128, 2048, 768),
    "dsv3": (32768, 8, 7168, 2048),
}


def torch_seconds_per_call(fn, min_time=0.2, max_calls=50, reps=5):
  """Like `seconds_per_call`: back-to-back calls between two CUDA events, median of reps."""
  import torch
  fn(); torch.cuda.synchronize()
  start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
  start.record(); fn(); end.record(); torch.cuda.synchronize()
  calls = int(max(1, min(max_calls, min_time / max(start.elapsed_time(end) / 1e3, 1e-6))))
  ts = []
  for _ in range(reps):
    start.record()
    for _ in range(calls):
      fn()
    end.record(); torch.cuda.synchronize()
    ts.append(start.elapsed_time(end) / 1e3 / calls)
  return float(np.median(ts))


def einsum_call(op, e, x, dy, w):
  """(jitted batched einsum, its args): the kernel call `op` on e equal groups."""
  m, k = x.shape
  xe, dye = x.reshape(e, m // e, k), dy.reshape(e, m // e, -1)
  if op == "fwd":
    return jax.jit(lambda a, b: jnp.einsum("emk,ekn->emn", a, b)), (xe, w)
  if op == "dgrad":
    return jax.jit(lambda a, b: jnp.einsum("emn,ekn->emk", a, b)), (dye, w)
  return jax.jit(lambda a, b: jnp.einsum("emk,emn->ekn", a, b)), (xe, dye)


def fwd_bwd_fn(gemm):
  def f(x, w, gs, dy):
    y, vjp = jax.vjp(lambda x_, w_: gemm(x_, w_, gs), x, w)
    dx, dw = vjp(dy)
    return y, dx, dw
  return jax.jit(f)


@functools.partial(jax.jit, static_argnums=(7,))
def _group_err(x, w_g, dy, y, dx, dw_g, start_size, smax):
  """Squared error and squared norm of (y, dx, dw_g) vs fp32 HIGHEST for one group."""
  hp = jax.lax.Precision.HIGHEST
  start, size = start_size[0], start_size[1]
  mask = (jnp.arange(smax) < size)[:, None]
  sl = lambda a: jnp.where(mask, jax.lax.dynamic_slice_in_dim(a, start, smax).astype(jnp.float32), 0.)
  xs, dys, ys, dxs = sl(x), sl(dy), sl(y), sl(dx)
  w32 = w_g.astype(jnp.float32)
  ry = jnp.dot(xs, w32, precision=hp)
  rdx = jnp.dot(dys, w32.T, precision=hp)
  rdw = jnp.dot(xs.T, dys, precision=hp)
  sq = lambda a: jnp.sum(a * a)
  return jnp.stack([sq(ys - ry), sq(ry), sq(dxs - rdx), sq(rdx),
                    sq(dw_g.astype(jnp.float32) - rdw), sq(rdw)])


def rel_errors(x, w, dy, y, dx, dw, sizes):
  """Relative errors of y, dx, dw against an fp32 reference, group by group."""
  smax = int(-(-int(sizes.max()) // 512) * 512)
  pad = lambda a: jnp.pad(a, ((0, smax), (0, 0)))
  x, dy, y, dx = pad(x), pad(dy), pad(y), pad(dx)
  acc = jnp.zeros((6,), jnp.float32)
  starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
  for g in range(len(sizes)):
    acc = acc + _group_err(x, w[g], dy, y, dx, dw[g],
                           jnp.array([starts[g], sizes[g]], jnp.int32), smax)
  acc = np.asarray(acc)
  return tuple(float(np.sqrt(acc[2 * i] / max(acc[2 * i + 1], 1e-30))) for i in range(3))


def rel(a, b):
  a = np.asarray(a, np.float64); b = np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def poison_device_memory(nbytes):
  """Fill and free a large buffer with NaN so fresh outputs start as NaN."""
  p = jnp.full((nbytes // 2,), jnp.nan, jnp.bfloat16)
  p.block_until_ready()
  del p


def variant_gemm(k, n, variant):
  """grouped_gemm with ping-pong and/or 2-CTA cluster tiles, and/or half tiles, and/or swap-AB
  remainder tiles, and/or merged tails of up to 64 or 32 rows ("pingpong", "cluster",
  "pingpong+cluster+half", "swap", "merge", "merge32", ...) for all three calls, as wide as
  each call's width allows (a call whose column tiles cannot pair runs without the cluster),
  with as many stages as fit."""
  pingpong, cluster, half, swap = (v in variant for v in ("pingpong", "cluster", "half", "swap"))
  merge = 32 if "merge32" in variant else 64 if "merge" in variant else 0

  def tile(width):
    widths = (128, 64) if pingpong else (256, 128, 64)
    tn = next((t for t in widths if width % ((2 if cluster else 1) * t) == 0), 64)
    cfg = mosaic.TileConfig(tile_n=tn, stages=6 if pingpong else 4, pingpong=pingpong,
                            cluster=2 if cluster and width % (2 * tn) == 0 else 1,
                            half_tiles=half, swap_ab=swap and (pingpong or tn >= 128),
                            merge_tail=merge if pingpong or tn >= 128 else 0)
    while cfg.stages > 2 and not mosaic.fits(cfg, 64, width):
      cfg = dataclasses.replace(cfg, stages=cfg.stages - 1)
    return cfg
  plan = (tile(n), tile(k), tile(n))
  return lambda a, b, g: api._pallas_gg(a, b, g, a.dtype, plan, api.pallas_interpreted("pallas"))


def smoke_check():
  """Small random shapes (empty groups, tail rows, edges inside a tile) vs float64, with the
  table's tiles, ping-pong, 2-CTA cluster, both, both with half tiles, swap-AB tiles and
  merged tails (shared, and ping-pong with the rest): a wrong kernel stops the run before any
  timing.
  Returns True when all pass."""
  ok = True
  for (m, e, k, n, seed), variant in itertools.product(
      ((384, 5, 128, 256, 0), (1000, 16, 256, 512, 1), (512, 3, 64, 128, 2)),
      ("table", "pingpong", "cluster", "pingpong+cluster", "pingpong+cluster+half", "swap",
       "pingpong+cluster+half+swap", "swap+merge", "pingpong+cluster+half+swap+merge32")):
    rng = np.random.default_rng(seed)
    sizes = rng.multinomial(int(m * 0.9), rng.dirichlet([0.5] * e)).astype(np.int32)
    sizes[0] = 0
    x = rng.standard_normal((m, k)).astype(np.float32)
    w = (rng.standard_normal((e, k, n)) / np.sqrt(k)).astype(np.float32)
    dy = rng.standard_normal((m, n)).astype(np.float32)
    bf = lambda a: jnp.asarray(a, jnp.bfloat16)
    gemm = (lambda a, b, g: grouped_gemm(a, b, g, impl="pallas")) if variant == "table" \
        else variant_gemm(k, n, variant)
    y, dx, dw = fwd_bwd_fn(gemm)(bf(x), bf(w), jnp.asarray(sizes), bf(dy))
    x, w, dy = (np.asarray(bf(a), np.float64) for a in (x, w, dy))
    ry, rdx, rdw = np.zeros((m, n)), np.zeros((m, k)), np.zeros((e, k, n))
    off = 0
    for g, s in enumerate(sizes.tolist()):
      r = slice(off, off + s)
      ry[r], rdx[r], rdw[g] = x[r] @ w[g], dy[r] @ w[g].T, x[r].T @ dy[r]
      off += s
    errs = [rel(o, r) for o, r in ((y, ry), (dx, rdx), (dw, rdw))]
    good = all(np.isfinite(errs)) and max(errs) <= 5e-3
    ok &= good
    print(f"check {variant} m={m} e={e} k={k} n={n}: rel err y/dx/dw " +
          " ".join(f"{v:.1e}" for v in errs) + ("" if good else "  WRONG"), flush=True)
  return ok


def run_case(name, m, e, k, n, args, torch_mod, tokamax_mod):
  sizes = dirichlet_sizes(m, e, seed=0)
  key = jax.random.key(1)
  kx, kw, kd = jax.random.split(key, 3)
  x = jax.random.normal(kx, (m, k), jnp.bfloat16)
  w = (jax.random.normal(kw, (e, k, n), jnp.float32) / np.sqrt(k)).astype(jnp.bfloat16)
  dy = jax.random.normal(kd, (m, n), jnp.bfloat16)
  gs = jnp.asarray(sizes)
  flops = 2.0 * m * k * n
  row = {"case": name, "sizes_min_max": (int(sizes.min()), int(sizes.max()))}

  ours = lambda x_, w_, g_: grouped_gemm(x_, w_, g_, impl="pallas")
  f_ours = jax.jit(ours)
  fb_ours = fwd_bwd_fn(ours)
  # correctness first, with poisoned memory
  poison_device_memory(3 * m * max(k, n) * 2)
  y, dx, dw = fb_ours(x, w, gs, dy)
  row["nan"] = bool(jnp.isnan(y).any() | jnp.isnan(dx).any() | jnp.isnan(dw).any())
  row["err"] = rel_errors(x, w, dy, y, dx, dw, sizes)
  del y, dx, dw
  # name -> (fwd, fwd+bwd) timers (() -> seconds per call), timed in turns at the end
  sustained = dict(min_time=args.min_time, max_calls=10**6, reps=1)
  jax_timer = lambda fn, *a: functools.partial(seconds_per_call, fn, *a, **sustained)
  timers = {"pallas": (jax_timer(f_ours, x, w, gs), jax_timer(fb_ours, x, w, gs, dy))}
  # The same kernels on equal groups (m/e rows each, as the einsum column): what is left
  # of the gap to the einsum once no group leaves a part-filled tile.
  gs_eq = jnp.full((e,), m // e, jnp.int32)
  timers["pallas_eq"] = (jax_timer(f_ours, x, w, gs_eq), jax_timer(fb_ours, x, w, gs_eq, dy))

  if not args.skip_xla:
    xla = lambda x_, w_, g_: jax.lax.ragged_dot(x_, w_, g_)
    once = dict(min_time=0.1, max_calls=3, reps=1)  # slow: a few calls suffice
    try:
      row["xla"] = (flops / seconds_per_call(jax.jit(xla), x, w, gs, **once), float("nan"))
      row["xla"] = (row["xla"][0],
                    3 * flops / seconds_per_call(fwd_bwd_fn(xla), x, w, gs, dy, **once))
    except Exception as ex:  # noqa: BLE001 - report OOM and go on
      row.setdefault("xla", (float("nan"), float("nan")))
      print(name, "xla failed:", str(ex)[:120])
  if tokamax_mod is not None:
    tk = lambda x_, w_, g_: tokamax_mod.ragged_dot(x_, w_, g_)
    f_tk, fb_tk = jax.jit(tk), fwd_bwd_fn(tk)
    try:  # compiled and run once here, so a failure is reported before the timing turns
      jax.block_until_ready((f_tk(x, w, gs), fb_tk(x, w, gs, dy)))
      timers["tokamax"] = (jax_timer(f_tk, x, w, gs), jax_timer(fb_tk, x, w, gs, dy))
    except Exception as ex:  # noqa: BLE001
      row["tokamax"] = (float("nan"), float("nan")); print(name, "tokamax failed:", str(ex)[:200])

  ein, (xe, _) = einsum_call("fwd", e, x, dy, w)
  dye = dy.reshape(e, m // e, n)
  def ein_fb(x_, w_, dy_):
    y_, vjp = jax.vjp(ein, x_, w_)
    return (y_,) + vjp(dy_)
  timers["einsum"] = (jax_timer(ein, xe, w), jax_timer(jax.jit(ein_fb), xe, w, dye))

  if torch_mod is not None:
    torch = torch_mod
    tx = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    tw = (torch.randn(e, k, n, device="cuda", dtype=torch.float32) / np.sqrt(k)).to(torch.bfloat16)
    tdy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    offs = torch.tensor(np.cumsum(sizes), device="cuda", dtype=torch.int32)
    tf = lambda: torch._grouped_mm(tx, tw, offs=offs)
    txr = tx.clone().requires_grad_(True)
    twr = tw.clone().requires_grad_(True)
    def tfb():
      yy = torch._grouped_mm(txr, twr, offs=offs)
      gx, gw = torch.autograd.grad(yy, (txr, twr), tdy)
      return gx, gw
    timers["torch"] = (functools.partial(torch_seconds_per_call, tf, **sustained),
                       functools.partial(torch_seconds_per_call, tfb, **sustained))
  times = {col: ([], []) for col in timers}
  for _ in range(args.turns):
    for col, pair in timers.items():
      for timer, ts in zip(pair, times[col]):
        ts.append(timer())
  for col, (t_fwd, t_fb) in times.items():
    row[col] = (flops / np.median(t_fwd), 3 * flops / np.median(t_fb))
  timers.clear()  # the torch timers hold its tensors
  if torch_mod is not None:
    torch_mod.cuda.empty_cache()
  return row


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--shapes", default="mixtral,qwen3,dsv3")
  ap.add_argument("--skip-xla", action="store_true")
  ap.add_argument("--no-torch", action="store_true")
  ap.add_argument("--check-only", action="store_true", help="only the small-shape check")
  ap.add_argument("--skip-check", action="store_true", help="the caller already ran --check-only")
  ap.add_argument("--turns", type=int, default=3, help="timing turns (medians are printed)")
  ap.add_argument("--min-time", type=float, default=0.5,
                  help="seconds of back-to-back calls per timing (sustained: the power-limited clock)")
  args = ap.parse_args()
  print("jax", jax.__version__, "device", jax.devices()[0].device_kind)
  if not args.skip_check and not smoke_check():
    raise SystemExit("pallas grouped GEMM is wrong on small shapes: no timing")
  if args.check_only:
    return
  torch_mod = None
  if not args.no_torch:
    try:
      import torch
      torch_mod = torch
      print("torch", torch.__version__)
    except ImportError:
      print("torch not importable: torch column skipped")
  try:
    import tokamax
    tokamax_mod = tokamax
  except ImportError:
    tokamax_mod = None
    print("tokamax not importable: tokamax column skipped")
  rows = []
  for s in args.shapes.split(","):
    m, e, h, f = SHAPES[s]
    for orient, (k, n) in (("fc1", (h, 2 * f)), ("fc2", (f, h))):
      name = f"{s}-{orient}"
      try:
        r = run_case(name, m, e, k, n, args, torch_mod, tokamax_mod)
      except Exception as ex:  # noqa: BLE001 - keep the table going
        import traceback; traceback.print_exc()
        r = {"case": name, "error": str(ex)[:300]}
      print(r, flush=True)
      rows.append(r)
  cols = ["pallas", "pallas_eq", "xla", "tokamax", "torch", "einsum"]
  print("\nTFLOP/s fwd | fwd+bwd; pallas_eq: ours on equal groups; ratio = pallas/torch; "
        "/einsum = pallas/einsum (equal groups); err = rel. error vs fp32 (y, dx, dw)")
  print(f"{'case':14s} " + " ".join(f"{c:>15s}" for c in cols)
        + f" {'ratio':>11s} {'/einsum':>11s}  err")
  for r in rows:
    if "error" in r:
      print(f"{r['case']:14s} ERROR {r['error']}"); continue
    cells = []
    for c in cols:
      v = r.get(c)
      cells.append(f"{v[0] / 1e12:6.0f} | {v[1] / 1e12:6.0f}" if v else f"{'n/a':>15s}")
    vs = lambda c: (f"{r['pallas'][0] / r[c][0]:.2f} | {r['pallas'][1] / r[c][1]:.2f}"
                    if c in r else "")
    err = " ".join(f"{v:.1e}" for v in r["err"]) + (" NaN!" if r["nan"] else "")
    print(f"{r['case']:14s} " + " ".join(f"{c:>15s}" for c in cells)
          + f" {vs('torch'):>11s} {vs('einsum'):>11s}  {err}")


if __name__ == "__main__":
  main()
