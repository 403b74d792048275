"""The experts' weighted SwiGLU backward on the device: XLA's passes against the Pallas Triton kernel.

  python benchmarks/swiglu.py                        # the proxies' expert shapes
  python benchmarks/swiglu.py --sweep "2048,4 1024,4 4096,8"   # kernel block,num_warps

Per layer (rows = tokens · top-k, F = the expert FFN width): dh [R, 2F] and dprobs [R] from
(h, g, probs) in bf16, as moejax.moe.experts' backward forms them. Prints ms per call, the HBM bytes
moved at the minimum (read h and g, write dh) over that time, and the largest difference between
the two (dh in bf16 units).
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from moejax.kernels import swiglu as ksw
from moejax.moe.experts import _weighted_swiglu_bwd_xla
from row_kernel_sweep import compare, parse_sweep

SHAPES = {"mixtral_width": (32768, 14336), "qwen3_30b_width": (131072, 768)}  # rows, F


def main():
  sweep = parse_sweep(__doc__, ksw)
  for name, (r, f) in SHAPES.items():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = (2 * jax.random.normal(k1, (r, 2 * f), jnp.float32)).astype(jnp.bfloat16)
    g = jax.random.normal(k2, (r, f), jnp.float32).astype(jnp.bfloat16)
    probs = jax.random.uniform(k3, (r,), jnp.float32)
    gbytes = (2 * h.size + g.size) * 2 / 1e9
    compare(f"{name} [{r}, {f}]", gbytes, (h, probs, g), lambda h, p, g: _weighted_swiglu_bwd_xla((h, p), g),
            ksw, lambda h, p, g: ksw.weighted_swiglu_bwd_rows.__wrapped__(h, g, p), sweep)


if __name__ == "__main__":
  main()
