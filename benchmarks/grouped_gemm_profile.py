"""One grouped GEMM kernel call on the device, for ncu / SASS dumps, or a tile sweep.

  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd \
      --sweep "256,4 256,3 128,4 128,6"          # tile_n,stages: TFLOP/s of each

Under ncu (`ncu -k regex:body -c 1 python ...`) the first launch of the Mosaic
kernel (named after its body function) is the one profiled. Group sizes are the
autotuner's Dirichlet sizes and inputs (seed 0).
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
  ap.add_argument("--orient", choices=("fc1", "fc2"), default="fc2")
  ap.add_argument("--op", choices=configs.OPS, default="fwd")
  ap.add_argument("--sweep", default="", help="space-separated tile_n,stages pairs to time")
  a = ap.parse_args()
  m, e, h, f = SHAPES[a.shape]
  k, n = (h, 2 * f) if a.orient == "fc1" else (f, h)
  ck, cn = (n, k) if a.op == "dgrad" else (k, n)
  data = inputs(m, e, k, n)
  flops = 2.0 * m * k * n
  if not a.sweep:
    cfg = configs.lookup(a.op, m, e, ck, cn)
    fn, args = kernel_call(a.op, cfg, *data)
    jax.block_until_ready(fn(*args))
    print(a.shape, a.orient, a.op, cfg)
    return
  for item in a.sweep.split():
    tn, st = (int(v) for v in item.split(","))
    cfg = dataclasses.replace(configs.lookup(a.op, m, e, ck, cn), tile_n=tn, stages=st)
    fn, args = kernel_call(a.op, cfg, *data)
    t = seconds_per_call(fn, *args)
    print(f"{a.shape} {a.orient} {a.op} {cfg}: {flops / t / 1e12:.0f} TFLOP/s", flush=True)


if __name__ == "__main__":
  main()
