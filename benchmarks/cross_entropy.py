"""The fused cross-entropy's softmax passes on the device: XLA's against the Pallas Triton kernel.

  python benchmarks/cross_entropy.py                 # the proxies' chunk shapes
  python benchmarks/cross_entropy.py --sweep "4096,8 8192,8 2048,4"   # kernel block,num_warps

Per chunk of bf16 logits [rows, V] (as moejax.layers.cross_entropy cuts them): the log-sum-exp,
the label's logit and d_logits = weight·(softmax − onehot), as the training step forms them.
Prints ms per chunk, the HBM bytes moved at the minimum (read the logits, write d) over that time,
and the largest difference between the two (d in bf16 units).
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from moejax.kernels import cross_entropy as kce
from moejax.layers.cross_entropy import _d_logits, _lse_and_target, chunk_positions
from row_kernel_sweep import compare, parse_sweep

SHAPES = {"qwen3_30b_width": (4, 4096, 151936), "mixtral_width": (4, 4096, 32000)}  # batch, seq, vocab


def xla_passes(logits_RV, labels_R, weights_R):
  """The XLA path of moejax.layers.cross_entropy on one chunk (vocabulary whole on the device)."""
  x = logits_RV.astype(jnp.float32)
  lse, target = _lse_and_target(x, labels_R, vocab_split=False)
  return lse, target, _d_logits(x, lse, labels_R, weights_R, logits_RV.dtype)


def main():
  sweep = parse_sweep(__doc__, kce)
  for name, (b, s, v) in SHAPES.items():
    rows = b * chunk_positions(b, s, v)
    k1, k2 = jax.random.split(jax.random.key(0))
    logits = (4 * jax.random.normal(k1, (rows, v), jnp.float32)).astype(jnp.bfloat16)
    labels = jax.random.randint(k2, (rows,), 0, v)
    weights = jnp.ones((rows,), jnp.float32)
    gbytes = 2 * logits.size * logits.dtype.itemsize / 1e9
    compare(f"{name} chunk [{rows}, {v}]", gbytes, (logits, labels, weights), xla_passes, kce,
            lambda l, y, w: kce.softmax_xent_rows.__wrapped__(l, y, w, v), sweep)


if __name__ == "__main__":
  main()
