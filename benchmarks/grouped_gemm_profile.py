"""One grouped GEMM kernel call on the device, for ncu / SASS dumps, or a tile sweep.

  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd \
      --sweep "256,4 256,3 128,4 128,6"          # tile_n,stages: TFLOP/s of each
  python benchmarks/grouped_gemm_profile.py --shape mixtral --orient fc1,fc2 --op fwd,dgrad,wgrad \
      --alpha 100 --sweep tuned                   # the tuned tile of each call, near-equal groups
  python benchmarks/grouped_gemm_profile.py --shape mixtral --orient fc1 --op fwd --alpha 100 \
      --sweep "256,4,4,1 256,4,16,1" --min-time 3 --clocks   # tile orders, sustained (power-limited)
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad,wgrad \
      --sweep "tuned alternate_epilogues=0"       # the tuned tile with one field changed
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1 --op fwd --min-time 3 --clocks \
      --sweep "tuned einsum"                      # against the equal-groups einsum (cuBLAS), clocks
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc2 --op fwd --sweep "tuned einsum" \
      --trace                                     # device time per call: the GEMM, the rest, the gaps
  python benchmarks/grouped_gemm_profile.py --shape qwen3 --orient fc1,fc2 --op fwd,dgrad \
      --sweep "tuned swap_ab=1 einsum" --repeat 5 # in turns, 5 times: each one's median

A swept tile that does not fit its call is skipped; each one's output is checked against the
first swept tile's (WRONG when they differ by more than 1e-2).

Under ncu (`ncu -k regex:body -c 1 python ...`) the first launch of the Mosaic
kernel (named after its body function) is the one profiled. Group sizes are the
autotuner's Dirichlet(alpha) sizes and inputs (seed 0).
"""
from __future__ import annotations

import argparse
import contextlib
import collections
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax
import jax.numpy as jnp

from moejax.kernels.grouped_gemm import configs
from moejax.kernels.grouped_gemm.autotune import inputs, kernel_call, seconds_per_call
from moejax.kernels.grouped_gemm.mosaic import fits

sys.path.insert(0, os.path.dirname(__file__))
from grouped_gemm import SHAPES, einsum_call  # noqa: E402
from profile_breakdown import busy_and_idle, kernel_events  # noqa: E402


@contextlib.contextmanager
def gpu_clocks(out: dict):
  """Samples the SM clock (MHz) and board power (W) with nvidia-smi every 50 ms while the block
  runs; `out` gets their means. A sustained GEMM on an H200 is power-limited, so its clock (and
  the DRAM traffic that shares the power budget) decides its speed as much as the tile does."""
  with tempfile.TemporaryFile("w+") as f:
    proc = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                             "-lms", "50"], stdout=f, stderr=subprocess.DEVNULL)
    try:
      yield
    finally:
      proc.terminate()
      proc.wait()
      f.seek(0)
      rows = [[float(v) for v in line.split(",")] for line in f if line.count(",") == 1]
      if rows:
        out.update(sm_mhz=sum(r[0] for r in rows) / len(rows), watts=sum(r[1] for r in rows) / len(rows))


POSITIONAL = ("tile_n", "stages", "grid_tile_width", "grid_minor_dim")


def changed(cfg, item):
  """cfg with the fields of a sweep item changed: comma-separated values, positional
  (`POSITIONAL`) or name=value (any TileConfig field)."""
  vals = [v.split("=") if "=" in v else (POSITIONAL[i], v) for i, v in enumerate(item.split(","))]
  return dataclasses.replace(cfg, **{f: type(getattr(cfg, f))(int(v)) for f, v in vals})


def device_time_per_call(fn, args, calls=20):
  """Traces `calls` back-to-back calls (jax.profiler) and returns per call: {kernel: µs} of the
  device's kernels and the µs the device sat idle between the first kernel and the last. The
  grouped GEMM's call also runs the tile schedule's small XLA kernels before the GEMM; this shows
  what they and the gaps around them cost next to the GEMM itself."""
  jax.block_until_ready(fn(*args))
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    jax.profiler.stop_trace()
    kernels = kernel_events(d)
  per = collections.Counter()
  for e in kernels:
    per[e["name"][:48]] += e["dur"] / calls
  return per, busy_and_idle(kernels)[1] / calls


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--shape", choices=sorted(SHAPES), default="qwen3")
  ap.add_argument("--orient", default="fc2", help="fc1, fc2 or a comma list")
  ap.add_argument("--op", default="fwd", help=f"one of {configs.OPS} or a comma list")
  ap.add_argument("--alpha", type=float, default=1.0,
                  help="Dirichlet concentration of the group sizes (100: near-equal groups)")
  ap.add_argument("--sweep", default="",
                  help="space-separated tiles to time: 'tuned' (the table's tile) or comma-separated "
                       "fields changed from it, positional (tile_n,stages,grid_tile_width,grid_minor_dim) "
                       "or name=value (any TileConfig field); 'einsum' times the batched einsum of the "
                       "same call on equal groups (what cuBLAS reaches without ragged groups)")
  ap.add_argument("--min-time", type=float, default=0.2,
                  help="seconds of back-to-back calls per timing (a few seconds: the sustained, power-limited speed)")
  ap.add_argument("--repeat", type=int, default=1,
                  help="time the swept items in turns this many times; prints each item's median, "
                       "which --write-best then compares")
  ap.add_argument("--clocks", action="store_true", help="also print the mean SM clock and power while timing")
  ap.add_argument("--trace", action="store_true",
                  help="also trace 20 calls of each and print the device time per call by kernel, and the idle gaps")
  ap.add_argument("--write-best", action="store_true",
                  help="store the fastest swept tile of each call in tiles.json for this device kind")
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
      calls = []
      first = None  # the first kernel item's output: the others must agree with it
      for item in items:
        cfg = tuned
        if item == "einsum":
          cfg, (fn, args) = "einsum (equal groups)", einsum_call(op, e, *data[1:])
        else:
          if item != "tuned":
            cfg = changed(tuned, item)
          if not fits(cfg, ck, cn):
            print(f"{a.shape} {orient} {op} {item}: {cfg} does not fit, skipped", flush=True)
            continue
          fn, args = kernel_call(op, cfg, *data)
        out = jax.block_until_ready(fn(*args))
        if item != "einsum":
          first = out if first is None else first
          err = float(jnp.linalg.norm(out.astype(jnp.float32) - first.astype(jnp.float32))
                      / jnp.linalg.norm(first.astype(jnp.float32)))
          if not err <= 1e-2:
            print(f"{a.shape} {orient} {op} {item}: WRONG, rel. difference {err:.2e} from "
                  f"{items[0]}", flush=True)
        calls.append((item, cfg, fn, args, []))
      for _ in range(a.repeat):  # items in turns: a drift of the clock hits them alike
        for item, cfg, fn, args, times in calls:
          clk = {}
          with gpu_clocks(clk) if a.clocks else contextlib.nullcontext():
            t = seconds_per_call(fn, *args, min_time=a.min_time, max_calls=10**6)
          times.append(t)
          extra = f" {clk['sm_mhz']:.0f} MHz {clk['watts']:.0f} W" if clk else ""
          print(f"{a.shape} {orient} {op} alpha={a.alpha:g} {cfg}: {t * 1e3:.3f} ms "
                f"{flops / t / 1e12:.0f} TFLOP/s{extra}", flush=True)
          if a.trace:
            per, idle = device_time_per_call(fn, args)
            print("  per call: " + ", ".join(f"{k} {v:.1f} us" for k, v in per.most_common())
                  + f"; idle between kernels {idle:.1f} us; wall {t * 1e6:.1f} us", flush=True)
      best = None
      for item, cfg, _, _, times in calls:
        t = statistics.median(times)
        if a.repeat > 1:
          print(f"median of {a.repeat}: {a.shape} {orient} {op} {item}: {t * 1e3:.3f} ms "
                f"{flops / t / 1e12:.0f} TFLOP/s", flush=True)
        if item != "einsum" and (best is None or t < best[0]):
          best = (t, cfg)
      if a.write_best and best is not None:
        configs.write_entries([{"op": op, "m": m, "g": e, "k": ck, "n": cn, "cfg": dataclasses.asdict(best[1]),
                                "tflops": round(flops / best[0] / 1e12, 1), "alpha": a.alpha,
                                "min_time": a.min_time, "device": jax.devices()[0].device_kind}])
        print(f"stored {op} k={ck} n={cn}: {best[1]}", flush=True)


if __name__ == "__main__":
  main()
