"""Session 28 (CPU only): how evenly static unit orders load the SMs when merged tails
(TileConfig.merge_tail) make some tiles heavier than a full one while swap-AB and half tiles
stay lighter, on the benchmark's Qwen3 groups (dirichlet_sizes(65536, 128, seed) for seeds
0-7) with the H200 forward tiles of tiles.json, merge_tail set to 0, 32 or 64.

Costs, in full tiles (session 19's b2_remainders for the light ones): swap-AB 32 rows 0.55,
64 rows 0.68, half tiles 0.7; a merged tile 1 + e(r) for its r merged rows, e(32) and e(64)
in two guesses (not measured: the merged tails have not run on a GPU yet); unused slots 0.
Program p computes the units of its slot in every wave; the critical path is the busiest
program's load. Orders:
  plain      the planar-snake order (no reordering);
  one class  odd tiles (heavy or light) as one class, each program +-1 of them (the kernel's
             `_balanced_order` before session 28);
  balanced   the kernel's `_balanced_order` now: light and heavy units in two deals from
             the same program, so the programs that get one more heavy unit are those that
             got one more light one (or an empty slot of the partial last wave);
  greedy     per wave, the heaviest units to the least loaded programs (a loop, which the
             kernel avoids; a yardstick, not a bound).
  .venv/bin/python benchmarks/results/cpu_2026-12-05_session28/merge_balance_model.py
(output: model.log beside it)
"""
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.pallas import mosaic_gpu as plgpu

from moejax.kernels.grouped_gemm import mosaic
from moejax.kernels.grouped_gemm.autotune import dirichlet_sizes

# session 22's model: the H200 table's tiles and the light tiles' measured costs
sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "h200_2026-12-04_session22"))
from sm_balance_model import G, M, SMS, h200_cfg  # noqa: E402
from sm_balance_model import tile_costs as light_tile_costs  # noqa: E402

GUESSES = {"e32=.30 e64=.50": (0.30, 0.50), "e32=.40 e64=.65": (0.40, 0.65)}


def tile_costs(sched, cfg, e32, e64):
  """Session 22's costs, plus e32 / e64 for a tile with <= 32 / <= 64 merged rows."""
  c = light_tile_costs(sched, cfg)
  if sched.shape[0] == 5:
    extra = np.asarray(sched[4])
    c = c + np.where(extra > 32, e64, np.where(extra > 0, e32, 0.0))
  return c


def loads(order_costs, programs):
  """order_costs[lin]: the cost of the unit kernel unit lin computes."""
  w = -(-len(order_costs) // programs)
  a = np.zeros(w * programs)
  a[:len(order_costs)] = order_costs
  return a.reshape(w, programs).sum(0)


def one_class(costs, programs):
  """The kernel's order before session 28: odd units (neither full nor empty) as one class,
  dealt one per program from program 0, counted from the last wave backwards."""
  odd = (costs != 1.0) & (costs > 0)
  load, later = np.zeros(programs), 0
  for first in reversed(range(0, len(costs), programs)):
    c, o = costs[first:first + programs], odd[first:first + programs]
    size = len(c)
    pos = np.empty(size, int)
    pos[o] = (later + np.arange(o.sum())) % size
    pos[~o] = (later + o.sum() + np.arange(size - o.sum())) % size
    load[pos] += c
    later += o.sum()
  return load


def greedy(costs, programs):
  load = np.zeros(programs)
  for first in range(0, len(costs), programs):
    wave = np.sort(costs[first:first + programs])[::-1]
    free = np.argsort(load, kind="stable")[:len(wave)]
    load[free] += wave
  return load


def main():
  print("critical path (the busiest program's load, in full tiles), mean over seeds 0-7;"
        " in brackets over the mean load")
  for name, (op, k, n) in {"fc1 fwd": ("fwd", 2048, 1536), "fc2 fwd": ("fwd", 768, 2048)}.items():
    base = h200_cfg(op, k, n)
    programs = SMS // base.cluster
    for merge in (0, 32, 64):
      cfg = dataclasses.replace(base, merge_tail=merge)
      for guess, (e32, e64) in GUESSES.items():
        res = {}
        for seed in range(8):
          sched = mosaic.tile_schedule(jnp.asarray(dirichlet_sizes(M, G, seed)), M, merge)
          units = (sched.shape[1], n // cfg.tile_n // cfg.cluster)
          snake = jax.vmap(lambda i, units=units: plgpu.planar_snake(
              i, units, cfg.grid_minor_dim, cfg.grid_tile_width)[0])
          c = tile_costs(sched, cfg, e32, e64)
          plain = c[np.asarray(snake(jnp.arange(units[0] * units[1], dtype=jnp.int32)))]
          order = mosaic._balanced_order(sched, units, cfg, programs, cfg.swap_ab)
          for o, load in {"plain": loads(plain, programs), "one class": one_class(plain, programs),
                          "balanced": loads(c[np.asarray(snake(order))], programs),
                          "greedy": greedy(plain, programs)}.items():
            res.setdefault(o, []).append((load.max(), load.max() / load.mean()))
        print(f"  {name} merge_tail={merge:2d} {guess}: " + ", ".join(
            f"{o} {np.mean([r[0] for r in v]):.2f} ({np.mean([r[1] for r in v]):.3f})"
            for o, v in res.items()))


if __name__ == "__main__":
  main()
