"""One grouped GEMM kernel call on the device, for ncu / SASS dumps, or a tile sweep.

  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd \
      --sweep "256,4 256,3 128,4 128,6"          # tile_n,stages: TFLOP/s of each
  python benchmarks/grouped_gemm_profile.py --shape mixtral --orient fc1,fc2 --op fwd,dgrad,wgrad \
      --alpha 100 --sweep tuned                   # the tuned tile of each call, near-equal groups

Under ncu (`ncu -k regex:body -c 1 python ...`) the first launch of the Mosaic
kernel (named after its body function) is the one profiled. Group sizes are the
autotuner's Dirichlet(alpha) sizes and inputs (seed 0).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax

from moejax.kernels.grouped_gemm import configs
from moejax.kernels.grouped_gemm.autotune import inputs, kernel_call, seconds_per_call

sys.path.insert(0, os.path.dirname(__file__))
from grouped_gemm import SHAPES  # noqa: E402


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3")
  ap.add_argument("--orient", default="fc2", help="fc1, fc2 or a comma list")
  ap.add_argument("--op", default="fwd", help=f"one of {configs.OPS} or a comma list")
  ap.add_argument("--alpha", type=float, default=1.0,
                  help="Dirichlet concentration of the group sizes (100: near-equal groups)")
  ap.add_argument("--sweep", default="",
                  help="space-separated tile_n,stages pairs to time, or 'tuned' for the table's tile")
  a = ap.parse_args()
  m, e, h, f = SHAPES[a.shape]
  for orient in a.orient.split(","):
    k, n = (h, 2 * f) if orient == "fc1" else (f, h)
    data = inputs(m, e, k, n, alpha=a.alpha)
    flops = 2.0 * m * k * n
    for op in a.op.split(","):
      ck, cn = (n, k) if op == "dgrad" else (k, n)
      tuned = configs.lookup(op, m, e, ck, cn)
      if not a.sweep:
        fn, args = kernel_call(op, tuned, *data)
        jax.block_until_ready(fn(*args))
        print(a.shape, orient, op, tuned)
        continue
      items = ["tuned"] if a.sweep == "tuned" else a.sweep.split()
      for item in items:
        cfg = tuned
        if item != "tuned":
          tn, st = (int(v) for v in item.split(","))
          cfg = dataclasses.replace(tuned, tile_n=tn, stages=st)
        fn, args = kernel_call(op, cfg, *data)
        t = seconds_per_call(fn, *args)
        print(f"{a.shape} {orient} {op} alpha={a.alpha:g} {cfg}: {t * 1e3:.3f} ms "
              f"{flops / t / 1e12:.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
  main()
