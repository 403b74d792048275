"""The experts' weighted SwiGLU backward on the device: XLA's passes against the Pallas Triton kernel.

  python benchmarks/swiglu.py                        # the proxies' expert shapes
  python benchmarks/swiglu.py --sweep "2048,4 1024,4 4096,8"   # kernel block,num_warps

Per layer (rows = tokens · top-k, F = the expert FFN width): dh [R, 2F] and dprobs [R] from
(h, g, probs) in bf16, as moejax.moe.experts' backward forms them. Prints ms per call, the HBM bytes
moved at the minimum (read h and g, write dh) over that time, and the largest difference between
the two (dh in bf16 units).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from moejax.kernels import swiglu as ksw
from moejax.kernels.grouped_gemm.autotune import seconds_per_call
from moejax.moe.experts import _weighted_swiglu_bwd_xla

SHAPES = {"mixtral_width": (32768, 14336), "qwen3_30b_width": (131072, 768)}  # rows, F


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sweep", default="", help="space-separated block,num_warps pairs for the kernel")
  a = ap.parse_args()
  sweep = [tuple(int(v) for v in item.split(",")) for item in a.sweep.split()] or [(ksw.BLOCK, ksw.NUM_WARPS)]
  for name, (r, f) in SHAPES.items():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    h = (2 * jax.random.normal(k1, (r, 2 * f), jnp.float32)).astype(jnp.bfloat16)
    g = jax.random.normal(k2, (r, f), jnp.float32).astype(jnp.bfloat16)
    probs = jax.random.uniform(k3, (r,), jnp.float32)
    gbytes = (2 * h.size + g.size) * 2 / 1e9
    ref_fn = jax.jit(lambda h, p, g: _weighted_swiglu_bwd_xla((h, p), g))
    ref = ref_fn(h, probs, g)
    t = seconds_per_call(ref_fn, h, probs, g)
    print(f"{name} [{r}, {f}]  xla     {t * 1e3:7.3f} ms  {gbytes / t / 1e3:5.2f} TB/s", flush=True)
    for block, warps in sweep:
      ksw.BLOCK, ksw.NUM_WARPS = block, warps
      fn = jax.jit(lambda h, p, g: ksw.weighted_swiglu_bwd_rows.__wrapped__(h, g, p))
      got = fn(h, probs, g)
      err = max(float(jnp.max(jnp.abs(x.astype(jnp.float32) - y.astype(jnp.float32)))) for x, y in zip(got, ref))
      t = seconds_per_call(fn, h, probs, g)
      print(f"{name} [{r}, {f}]  pallas block={block} warps={warps}  {t * 1e3:7.3f} ms  "
            f"{gbytes / t / 1e3:5.2f} TB/s  max diff {err:.2e}", flush=True)


if __name__ == "__main__":
  main()
