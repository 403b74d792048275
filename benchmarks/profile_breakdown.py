"""Device time per step of a jax.profiler trace, summed by what the kernels compute.

  python benchmarks/profile_breakdown.py PROFILE_DIR [--steps 2]

PROFILE_DIR is what `benchmarks/train_step.py --profile DIR` wrote: the trace
(plugins/profile/*/*.trace.json.gz) and the compiled step's HLO (step.hlo.txt). Each GPU kernel
event names its HLO instruction (`hlo_op`); the HLO's `op_name` metadata carries the JAX/Flax
scope (`.../block_0/moe/router/...`, `transpose(...)` for the backward pass), which decides the
category. Prints ms/step per category (forward and backward) and the idle time between kernels,
then the longest instructions with their category, kernel and scope (to refine the rules).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re

# (category, test on the op_name, test on the kernel name); first match wins
RULES = [
    ("collectives", lambda o: False, lambda k: "nccl" in k.lower() or "all_reduce" in k or "all_gather" in k),
    ("LM head + loss", lambda o: "output_layer" in o or "cross_entropy" in o or "log_softmax" in o, lambda k: False),
    ("attention core (cuDNN/XLA)", lambda o: "/attention/" in o and ("dot_product_attention" in o or "fmha" in o
                                                                     or "custom-call" in o), lambda k: "fmha" in k or "sdpa" in k or "cudnn" in k),
    ("attention projections + rotary", lambda o: "/attention/" in o, lambda k: False),
    ("router", lambda o: "/router/" in o, lambda k: False),
    ("expert GEMMs", lambda o: "_pallas_gg" in o or "ragged" in o or "grouped_gemm" in o,
     lambda k: "ragged" in k or "mosaic" in k.lower()),
    ("shared experts", lambda o: "/shared_experts/" in o, lambda k: False),
    ("permute/dispatch/combine, expert act", lambda o: "/moe/" in o, lambda k: False),
    ("dense MLP", lambda o: "/mlp/" in o, lambda k: False),
    # with the layer loop unrolled (model.scan_unroll=0) a stacked weight's gradient is its layers'
    # gradients concatenated: a copy of every layer-stacked gradient (RESULTS.md, issue 18)
    ("layer-stack gradient concatenation", lambda o: "transpose(" in o and o.endswith("/decoder/concatenate"),
     lambda k: False),
    ("norms", lambda o: "norm" in o, lambda k: False),
    ("embedding", lambda o: "/embedding/" in o, lambda k: False),
    ("optimizer + step glue", lambda o: "GPTModel" not in o, lambda k: False),
]


def hlo_op_names(path: str) -> dict[str, str]:
  """instruction name -> op_name metadata, from the compiled HLO text."""
  out = {}
  pat = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=.*?op_name=\"([^\"]*)\"")
  with open(path) as f:
    for line in f:
      m = pat.match(line)
      if m:
        out[m.group(1)] = m.group(2)
  return out


def categorize(op_name: str, kernel: str) -> str:
  for cat, by_op, by_kernel in RULES:
    if by_kernel(kernel) or (op_name and by_op(op_name)):
      return cat
  return "other"


def kernel_events(profile_dir: str, host: bool = False) -> list[dict]:
  """The kernel events of the newest jax.profiler trace under profile_dir: GPU 0's (with
  host=True, the CPU's XLA thunks), each naming its HLO instruction (`hlo_op`)."""
  trace = sorted(glob.glob(os.path.join(profile_dir, "plugins/profile/*/*.trace.json.gz")))[-1]
  events = json.load(gzip.open(trace))["traceEvents"]
  procs = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  gpu = {pid for pid, n in procs.items() if ("/host:CPU" in n if host else "GPU:0" in n)}
  return [e for e in events if e.get("ph") == "X" and e["pid"] in gpu and "hlo_op" in e.get("args", {})]


def busy_and_idle(kernels: list[dict]) -> tuple[float, float]:
  """(µs some kernel ran, µs none did) between the first kernel's start and the last's end."""
  intervals = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
  busy, end = 0.0, None
  for a, b in intervals:
    if end is None or a > end:
      busy += b - a
      end = b
    elif b > end:
      busy += b - end
      end = b
  wall = (end - intervals[0][0]) if intervals else 0.0
  return busy, wall - busy


def breakdown(profile_dir: str, steps: int, host: bool = False):
  kernels = kernel_events(profile_dir, host)
  names = hlo_op_names(os.path.join(profile_dir, "step.hlo.txt"))
  per_cat = collections.Counter()
  per_op = collections.Counter()
  for e in kernels:
    op = names.get(e["args"]["hlo_op"], "")
    cat = categorize(op, e["name"])
    direction = "bwd" if "transpose(" in op else "fwd"
    per_cat[(cat, direction if cat != "optimizer + step glue" else "")] += e["dur"]
    per_op[(cat, e["args"]["hlo_op"], e["name"][:40], op[-90:])] += e["dur"]
  busy, idle = busy_and_idle(kernels)
  return per_cat, per_op, busy / steps / 1e3, idle / steps / 1e3


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("profile_dir")
  ap.add_argument("--steps", type=int, default=2)
  ap.add_argument("--host", action="store_true", help="CPU runs: XLA's host thunks stand for kernels")
  ap.add_argument("--top", type=int, default=25, help="list this many of the longest instructions")
  a = ap.parse_args()
  per_cat, per_op, busy_ms, idle_ms = breakdown(a.profile_dir, a.steps, a.host)
  print(f"{'category':40} {'fwd ms':>8} {'bwd ms':>8} {'total':>8}")
  cats = sorted({c for c, _ in per_cat}, key=lambda c: -sum(v for (k, _), v in per_cat.items() if k == c))
  for c in cats:
    f = per_cat.get((c, "fwd"), 0) / a.steps / 1e3
    b = per_cat.get((c, "bwd"), 0) / a.steps / 1e3
    tot = sum(v for (k, _), v in per_cat.items() if k == c) / a.steps / 1e3
    print(f"{c:40} {f:8.1f} {b:8.1f} {tot:8.1f}")
  print(f"{'kernels busy':40} {'':8} {'':8} {busy_ms:8.1f}")
  print(f"{'idle between kernels (host, gaps)':40} {'':8} {'':8} {idle_ms:8.1f}")
  for (cat, hlo, kernel, op), v in per_op.most_common(a.top):
    print(f"  {v / a.steps / 1e3:6.2f} ms  {cat[:22]:22} {hlo[:34]:34} {kernel:40} {op}")


if __name__ == "__main__":
  main()
