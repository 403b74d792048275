"""The real train step of a recipe (the train.py code path, synthetic tokens, no checkpoints), timed.

  python benchmarks/train_step.py --config configs/proxies/mixtral_width.py [--config.a.b=v ...]
      [--steps 20] [--warmup 3] [--profile DIR] [--out FILE.json] [--tag NAME]

Warm-up steps, then timed steps one after another, as train.py's loop runs them (a step's metrics
are read once the next step is queued); prints tokens/s, TFLOP/s per device (REFERENCE.md §3's
count), MFU against 989 TFLOP/s and against a dense 8192³ bf16 matmul timed in the same process,
peak device memory and compile time.
`--profile DIR` writes a jax.profiler trace of two more steps (benchmarks/profile_breakdown.py sums
it by kind).
"""
from __future__ import annotations

import json
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from flax import linen as nn
from ml_collections import config_flags

from moejax.data.loader import device_batch, make_dataset
from moejax.metrics.flops import num_params, train_flops_per_token
from moejax.metrics.profile import StepProfiler
from moejax.parallel.sharding import batch_sharding, replicated
from moejax.train.loop import queued_steps
from moejax.train.state import init_state, setup
from moejax.train.step import jit_train_step
from moejax.train.validate import validate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config().")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
_PROFILE = flags.DEFINE_string("profile", None, "Write a jax.profiler trace of 2 steps here.")
_OUT = flags.DEFINE_string("out", None, "Append the result as a JSON line to this file.")
_TAG = flags.DEFINE_string("tag", "", "A name for this run in the table and JSON.")
PEAK = 989.0  # H100/H200 dense bf16 TFLOP/s


def matmul_tflops(n: int = 8192, iters: int = 10) -> float:
  """Dense bf16 n³ matmul rate on device 0 (the practical ceiling, measured beside the step)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(iters):
    out = f(a)
  out.block_until_ready()
  return 2 * n ** 3 * iters / (time.perf_counter() - t0) / 1e12


def run(cfg) -> dict:
  devices = jax.devices()
  validate(cfg, len(devices))
  parts = setup(cfg, devices)
  mesh, rules, model, optimizer = parts.layout.mesh, parts.rules, parts.model, parts.optimizer
  shardings, spec = parts.shardings, model.spec
  t = cfg.train
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = init_state(model, optimizer, t.seq_length, t.seed, shardings)
    bsh = batch_sharding(mesh, rules, ndim=3)
    dataset = make_dataset(cfg, len(devices), bsh)
    step_fn = jit_train_step(cfg, parts, replicated(mesh))
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, device_batch(dataset[0], bsh)).compile()
    compile_s = time.perf_counter() - t0

    def run_step(k):
      nonlocal state
      state, metrics = compiled(state, device_batch(dataset[k], bsh))
      return metrics

    def run_steps(first, n):  # steps queued as train.py's loop queues them
      return list(queued_steps(run_step, range(first, first + n), lambda k: False))

    run_steps(0, _WARMUP.value)
    timed = run_steps(_WARMUP.value, _STEPS.value)
    times, metrics = [dt for _, _, dt, _ in timed], timed[-1][1]
    step = _WARMUP.value + _STEPS.value
    if _PROFILE.value:  # two more steps, traced as train.py's logging.profile does
      profiler = StepProfiler(_PROFILE.value, step, step + 2, compiled=compiled)
      for _ in range(2):
        profiler.before(step)
        state, metrics = compiled(state, device_batch(dataset[step], bsh))
        jax.device_get(metrics)
        profiler.after(step)
        step += 1
  stats = devices[0].memory_stats() or {}
  step_s = statistics.median(times)
  tokens = t.global_batch_size * t.seq_length
  tflops = train_flops_per_token(spec, t.seq_length) * tokens / step_s / len(devices) / 1e12
  ceiling = matmul_tflops() if devices[0].platform == "gpu" else float("nan")
  return dict(tag=_TAG.value, device=devices[0].device_kind, devices=len(devices), jax=jax.__version__,
              params_b=num_params(spec) / 1e9, active_b=num_params(spec, active=True) / 1e9,
              tokens_per_step=tokens, step_ms=step_s * 1e3, step_ms_min=min(times) * 1e3,
              tokens_per_s=tokens / step_s, tflops_per_device=tflops, mfu=tflops / PEAK,
              matmul_tflops=ceiling, mfu_vs_matmul=tflops / ceiling, compile_s=compile_s,
              peak_gib=stats.get("peak_bytes_in_use", 0) / 2**30, loss=float(metrics["loss"]))


def main(argv):
  del argv
  r = run(_CONFIG.value)
  if _OUT.value:
    with open(_OUT.value, "a") as f:
      f.write(json.dumps(r) + "\n")
  print(f"\n{'tag':24} {'step ms':>8} {'tokens/s':>9} {'TFLOP/s':>8} {'MFU':>6} {'vs mm':>6} {'peak GiB':>8} "
        f"{'compile s':>9}")
  print(f"{r['tag'] or '-':24} {r['step_ms']:8.1f} {r['tokens_per_s']:9.0f} {r['tflops_per_device']:8.1f} "
        f"{100 * r['mfu']:5.1f}% {100 * r['mfu_vs_matmul']:5.1f}% {r['peak_gib']:8.1f} {r['compile_s']:9.1f}")
  print(f"({r['device']} x{r['devices']}, JAX {r['jax']}, {r['params_b']:.2f}B params, {r['active_b']:.2f}B active, "
        f"dense bf16 matmul {r['matmul_tflops']:.0f} TFLOP/s, loss {r['loss']:.3f})", file=sys.stderr)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
