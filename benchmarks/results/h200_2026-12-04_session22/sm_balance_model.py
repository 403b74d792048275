"""Session 22 (CPU only): how evenly the grouped GEMM's static unit orders load the SMs on the
benchmark's Qwen3 groups (dirichlet_sizes(65536, 128, seed=0)), with the H200 tiles of tiles.json.

A unit's cost, in full tiles: forward/dgrad 1 for a full tile, 0 for an unused slot, and the
measured costs of part-filled tiles (session 19, b2_remainders: swap-AB 32 rows ~0.55, 64 rows
~0.68; half tiles ~0.7); wgrad its group's 64-row steps plus an epilogue of `epi` steps. Program p
(an SM, or a 2-CTA cluster) computes kernel units p, p + P, ..., so its load is the sum of their
costs; max/mean is what a static order loses to the busiest SM. `swap_fixup` models one cheap
repair (not built): in rounds, pair the most and least loaded programs and swap one unit of theirs
within a wave (the units of a wave stay together), the swap that halves their difference best;
for wgrad, a longest-first greedy deal (each unit to the least loaded SM: a loop, not built).
  .venv/bin/python benchmarks/results/h200_2026-12-04_session22/sm_balance_model.py
"""
import heapq

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import mosaic_gpu as plgpu

from moejax.kernels.grouped_gemm import configs, mosaic
from moejax.kernels.grouped_gemm.autotune import dirichlet_sizes

M, G, SMS = 65536, 128, 132


def h200_cfg(op, k, n):
  """The table's H200 entry (configs.lookup prefers the running device's kind, here the CPU)."""
  e = next(e for e in configs._load_table() if e.get("device") == "NVIDIA H200"
           and e["op"] == op and (e["g"], e["k"], e["n"]) == (G, k, n))
  return mosaic.TileConfig(**e["cfg"])


def tile_costs(sched, cfg):
  """Each tile's cost, told apart by the kernel's own predicates (`_is_half`, `_swap_rows`)."""
  lo, cnt = sched[2], sched[3]
  c = np.where(cnt > 0, 1.0, 0.0)
  if cfg.half_tiles:
    c[np.asarray(mosaic._is_half(lo, cnt))] = 0.7
  if cfg.swap_ab:
    swap = np.asarray(mosaic._swap_rows(lo, cnt))
    c[swap == 2] = 0.68
    c[swap == 1] = 0.55
  return c


def imbalance(load):
  return load.max() / load.mean()


def swap_fixup(cost_lin, programs, rounds):
  w = -(-len(cost_lin) // programs)
  a = np.full(w * programs, np.nan)
  a[:len(cost_lin)] = cost_lin
  a = a.reshape(w, programs)
  for _ in range(rounds):
    load = np.nansum(a, 0)
    order = np.argsort(load)
    light, heavy = order[:programs // 2], order[::-1][:programs // 2]
    diff = load[heavy] - load[light]
    delta = a[:, heavy] - a[:, light]
    score = np.where((delta > 0) & (delta < diff), np.abs(delta - diff / 2), np.inf)
    best = np.argmin(score, 0)
    for i in np.nonzero(np.isfinite(score[best, np.arange(len(best))]))[0]:
      r, p, q = best[i], heavy[i], light[i]
      a[r, p], a[r, q] = a[r, q], a[r, p]
  return np.nansum(a, 0)


def main():
  sizes = jnp.asarray(dirichlet_sizes(M, G))
  sched = mosaic.tile_schedule(sizes, M)
  print("forward/dgrad (max/mean of the programs' loads; after 1 and 3 rounds of swap_fixup)")
  for name, (op, k, n) in {"fc1 fwd": ("fwd", 2048, 1536), "fc2 fwd": ("fwd", 768, 2048),
                           "fc1 dgrad": ("dgrad", 1536, 2048),
                           "fc2 dgrad": ("dgrad", 2048, 768)}.items():
    cfg = h200_cfg(op, k, n)
    programs = SMS // cfg.cluster
    units = (sched.shape[1], n // cfg.tile_n // cfg.cluster)
    order = mosaic._balanced_order(sched, units, cfg, programs, cfg.swap_ab)
    t, _ = jax.vmap(lambda i: plgpu.planar_snake(i, units, cfg.grid_minor_dim,
                                                 cfg.grid_tile_width))(order)
    c = tile_costs(sched, cfg)[np.asarray(t)]
    ratios = [imbalance(swap_fixup(c, programs, r)) for r in (0, 1, 3)]
    print(f"  {name:10s} programs {programs:3d} units {len(c)}: " +
          ", ".join(f"{x:.4f}" for x in ratios))
  print("wgrad (`_dealt`, max/mean; epilogue 0.5 / 1 / 2 steps; then a longest-first greedy deal, 1 step)")
  s = np.asarray(sizes)
  ends = np.cumsum(s)
  starts = ends - s
  steps = np.where(ends > starts, -(-(ends - starts // 8 * 8) // 64), 0)
  steps = steps[np.argsort(-steps, kind="stable")]
  for name, (k, n) in {"fc1 wgrad": (2048, 1536), "fc2 wgrad": (768, 2048)}.items():
    per_group = (k // 128) * (n // 256)
    num = G * per_group
    lin = np.arange(num)
    dealt = steps[np.asarray(mosaic._dealt(jnp.asarray(lin), num, SMS)) // per_group]
    out = []
    for epi in (0.5, 1.0, 2.0):
      load = np.zeros(SMS)
      np.add.at(load, lin % SMS, dealt + epi * (dealt > 0))
      out.append(imbalance(load))
    units = np.repeat(steps, per_group)  # heaviest first
    heap = [(0.0, p) for p in range(SMS)]  # longest first: each unit to the least loaded SM
    for x in units + 1.0 * (units > 0):
      load, p = heapq.heappop(heap)
      heapq.heappush(heap, (load + x, p))
    out.append(imbalance(np.array([h[0] for h in heap])))
    print(f"  {name:10s} units {num}: " + ", ".join(f"{x:.4f}" for x in out))


if __name__ == "__main__":
  main()
