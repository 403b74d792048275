"""`python -m moejax.plan --config configs/deepseek_v3.py --gpus 256 --gpu-memory 80GB
[--seq-length 4096 --micro-batch 1 --global-batch N --top 20]`

Prints one row per valid layout (tp, cp, pp, vpp, ep, etp; dp and edp derived) with the fastest
recompute / distributed-optimizer choice that fits (or, where none does, the smallest; `--choices`:
a row for every choice), its memory per GPU split into weights, gradients, optimizer state and
activations, and the estimated step time of moejax/plan/layouts.py's cost model; fitting layouts
first, fastest first.
When nothing fits, says so and what the smallest option needs (exit status 1).
"""
from __future__ import annotations

import argparse
import re
import sys

from moejax.config import ConfigError, model_spec
from moejax.config.args import positive
from moejax.config.recipes import load_recipe
from moejax.layers.attention import cudnn_takes
from moejax.metrics.memory import fmt_bytes
from moejax.plan.layouts import Option, plan


def parse_bytes(text: str) -> float:
  """'80GB', '141GiB', '512MB' → bytes; the unit is required (a bare 80 is not 80 bytes)."""
  m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]i?B?|B)\s*", text, re.IGNORECASE)
  if m is None or float(m.group(1)) <= 0:
    raise ValueError(f"--gpu-memory {text!r}: give a positive size with its unit, such as 80GB or 141GiB")
  unit = m.group(2).upper().rstrip("B")
  scale = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
  return float(m.group(1)) * scale


def choose(options: list[Option], gpu_bytes: float) -> tuple[Option, bool]:
  """The fastest option that fits (distributed optimizer preferred on ties), else the smallest."""
  fitting = [o for o in options if o.memory.total <= gpu_bytes]
  if fitting:
    return min(fitting, key=lambda o: (o.step_s, not o.distributed_optimizer, o.memory.total)), True
  return min(options, key=lambda o: o.memory.total), False


def _gb(n: float) -> str:
  return f"{n / 1e9:.1f}"


def table(rows: list[tuple[Option, bool]], gpu_bytes: float, top: int, layouts: int) -> str:
  head = (f"{'layout':<40} {'recompute':<9} {'dist-opt':<8} {'weights':>7} {'grads':>7} {'optim':>7} "
          f"{'activ':>7} {'total':>7}  {'fits':<4} {'step_s':>8}")
  lines = [head, "-" * len(head)]
  for o, fits in rows[:top]:
    m = o.memory
    lines.append(f"{o.name():<40} {o.recompute:<9} {'yes' if o.distributed_optimizer else 'no':<8} "
                 f"{_gb(m.weights):>7} {_gb(m.gradients):>7} {_gb(m.optimizer):>7} {_gb(m.activations):>7} "
                 f"{_gb(m.total):>7}  {'yes' if fits else 'NO':<4} {o.step_s:>8.3g}")
  lines.append(f"(GB per GPU of {fmt_bytes(gpu_bytes)}; {layouts} valid layouts, {min(top, len(rows))} rows shown)")
  return "\n".join(lines)


def run(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m moejax.plan", description=__doc__.split("\n\n")[1])
  ap.add_argument("--config", required=True, help="a recipe file, e.g. configs/mixtral_8x7b.py")
  count, rate = positive(int), positive(float)
  ap.add_argument("--gpus", type=count, required=True)
  ap.add_argument("--gpu-memory", required=True, help="memory per GPU, e.g. 80GB or 141GiB")
  ap.add_argument("--seq-length", type=count, help="default: the recipe's train.seq_length")
  ap.add_argument("--micro-batch", type=count, help="default: the recipe's train.micro_batch_size")
  ap.add_argument("--global-batch", type=count, help="default: the recipe's train.global_batch_size")
  ap.add_argument("--tflops", type=rate, default=400.0, help="achieved bf16 TFLOP/s per GPU (cost model)")
  ap.add_argument("--gpus-per-node", type=count, default=8)
  ap.add_argument("--attention", choices=("flash", "xla"), help="default: flash when cuDNN takes the head dims")
  ap.add_argument("--top", type=count, default=20, help="layouts shown")
  ap.add_argument("--choices", action="store_true",
                  help="every recompute (none/selective/full) x distributed-optimizer choice of the layouts shown")
  args = ap.parse_args(argv)
  try:
    gpu_bytes = parse_bytes(args.gpu_memory)
    cfg = load_recipe(args.config)
  except (ValueError, ConfigError) as e:
    print(e, file=sys.stderr)
    return 2
  for key, value in (("seq_length", args.seq_length), ("micro_batch_size", args.micro_batch),
                     ("global_batch_size", args.global_batch)):
    if value is not None:
      cfg.train[key] = value
  spec = model_spec(cfg)
  # the GPUs' attention, whatever this machine is: `auto` is cuDNN's flash kernel where it takes the dims
  impl = spec.attention.attention_impl
  flash = args.attention == "flash" if args.attention else (impl == "cudnn" or impl == "auto" and cudnn_takes(spec))
  options = plan(cfg, args.gpus, tflops=args.tflops, gpus_per_node=args.gpus_per_node, flash=flash)
  if not options:
    print(f"no layout of {args.gpus} GPUs passes moejax's layout checks for {args.config} (global batch "
          f"{cfg.train.global_batch_size}, micro-batch {cfg.train.micro_batch_size}): try another GPU count or "
          "global batch", file=sys.stderr)
    return 1
  ranked = sorted(((choose(o, gpu_bytes), o) for o in options),
                  key=lambda r: (not r[0][1], r[0][0].step_s if r[0][1] else r[0][0].memory.total))
  rows = [best for best, _ in ranked]
  if args.choices:  # every recompute / optimizer choice of the layouts shown
    rows = [(o, o.memory.total <= gpu_bytes) for _, opts in ranked[:args.top]
            for o in sorted(opts, key=lambda o: o.memory.total)]
  print(table(rows, gpu_bytes, len(rows) if args.choices else args.top, len(options)))
  if not ranked[0][0][1]:
    o, m = ranked[0][0][0], ranked[0][0][0].memory
    print(f"nothing fits in {fmt_bytes(gpu_bytes)} per GPU: the smallest option, {o.name()} with recompute "
          f"{o.recompute} and the distributed optimizer {'on' if o.distributed_optimizer else 'off'}, needs "
          f"{fmt_bytes(m.total)} (weights {fmt_bytes(m.weights)}, gradients {fmt_bytes(m.gradients)}, optimizer "
          f"state {fmt_bytes(m.optimizer)}, activations {fmt_bytes(m.activations)})")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(run())
