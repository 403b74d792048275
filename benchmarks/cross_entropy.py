"""The fused cross-entropy's softmax passes on the device: XLA's against the Pallas Triton kernel.

  python benchmarks/cross_entropy.py                 # the proxies' chunk shapes
  python benchmarks/cross_entropy.py --sweep "4096,8 8192,8 2048,4"   # kernel block,num_warps

Per chunk of bf16 logits [rows, V] (as moejax.layers.cross_entropy cuts them): the log-sum-exp,
the label's logit and d_logits = weight·(softmax − onehot), as the training step forms them.
Prints ms per chunk, the HBM bytes moved at the minimum (read the logits, write d) over that time,
and the largest difference between the two (d in bf16 units).
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from moejax.kernels import cross_entropy as kce
from moejax.kernels.grouped_gemm.autotune import seconds_per_call
from moejax.layers.cross_entropy import _d_logits, _lse_and_target, chunk_positions

SHAPES = {"qwen3_30b_width": (4, 4096, 151936), "mixtral_width": (4, 4096, 32000)}  # batch, seq, vocab


def xla_passes(logits_RV, labels_R, weights_R):
  """The XLA path of moejax.layers.cross_entropy on one chunk (vocabulary whole on the device)."""
  x = logits_RV.astype(jnp.float32)
  lse, target = _lse_and_target(x, labels_R, vocab_split=False)
  return lse, target, _d_logits(x, lse, labels_R, weights_R, logits_RV.dtype)


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sweep", default="", help="space-separated block,num_warps pairs for the kernel")
  a = ap.parse_args()
  sweep = [tuple(int(v) for v in item.split(",")) for item in a.sweep.split()] or [(kce.BLOCK, kce.NUM_WARPS)]
  for name, (b, s, v) in SHAPES.items():
    rows = b * chunk_positions(b, s, v)
    k1, k2 = jax.random.split(jax.random.key(0))
    logits = (4 * jax.random.normal(k1, (rows, v), jnp.float32)).astype(jnp.bfloat16)
    labels = jax.random.randint(k2, (rows,), 0, v)
    weights = jnp.ones((rows,), jnp.float32)
    gbytes = 2 * logits.size * logits.dtype.itemsize / 1e9
    ref_fn = jax.jit(xla_passes)
    ref = ref_fn(logits, labels, weights)
    t = seconds_per_call(ref_fn, logits, labels, weights)
    print(f"{name} chunk [{rows}, {v}]  xla     {t * 1e3:7.3f} ms  {gbytes / t / 1e3:5.2f} TB/s", flush=True)
    for block, warps in sweep:
      kce.BLOCK, kce.NUM_WARPS = block, warps
      fn = jax.jit(lambda l, y, w: kce.softmax_xent_rows.__wrapped__(l, y, w, v))
      got = fn(logits, labels, weights)
      err = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32)))) for g, r in zip(got, ref))
      t = seconds_per_call(fn, logits, labels, weights)
      print(f"{name} chunk [{rows}, {v}]  pallas block={block} warps={warps}  {t * 1e3:7.3f} ms  "
            f"{gbytes / t / 1e3:5.2f} TB/s  max diff {err:.2e}", flush=True)


if __name__ == "__main__":
  main()
