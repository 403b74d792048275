"""Grouped GEMM on CPU: impl="tiled" (row tiles, moejax's CPU default) against impl="xla"
(jax.lax.ragged_dot, which on CPU multiplies every row by every group's weight), fp32,
forward+backward, medians of timed calls in one process.

  python benchmarks/grouped_gemm_cpu.py [--repeats 10]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from moejax.kernels.grouped_gemm import grouped_gemm

# (rows, K, N, groups): the tiny recipe's fc1 and fc2 per micro-batch, a longer batch, 64 experts
SHAPES = [(512, 128, 256, 8), (512, 128, 128, 8), (4096, 128, 256, 8), (2048, 64, 64, 64)]


def _ms(impl, x, w, gs, repeats):
  f = jax.jit(jax.grad(lambda x, w: jnp.sum(grouped_gemm(x, w, gs, impl=impl) ** 2), argnums=(0, 1)))
  jax.block_until_ready(f(x, w))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(x, w))
    times.append(time.perf_counter() - t)
  return 1e3 * float(np.median(times))


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--repeats", type=int, default=10)
  args = ap.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, fwd+bwd ms (median of {args.repeats})")
  print("| rows x K -> N, groups | xla (ragged_dot) | tiled | xla / tiled |\n|---|---|---|---|")
  rng = np.random.default_rng(0)
  for m, k, n, g in SHAPES:
    x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((g, k, n)), jnp.float32)
    gs = jnp.asarray(rng.multinomial(m - m // 16, rng.dirichlet(np.ones(g))), jnp.int32)  # tail rows
    xla, tiled = (_ms(impl, x, w, gs, args.repeats) for impl in ("xla", "tiled"))
    print(f"| {m} x {k} -> {n}, {g} | {xla:.1f} | {tiled:.1f} | {xla / tiled:.1f} |")


if __name__ == "__main__":
  main()
