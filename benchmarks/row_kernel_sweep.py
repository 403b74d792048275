"""Shared by benchmarks/cross_entropy.py and swiglu.py: a Pallas Triton row kernel against the XLA
passes it replaces, at one or more (BLOCK, NUM_WARPS) settings of the kernel's module."""
from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from moejax.kernels.grouped_gemm.autotune import seconds_per_call


def parse_sweep(doc: str, kernel_module):
  """The script's `--sweep "block,warps ..."` (default: the module's own BLOCK, NUM_WARPS)."""
  ap = argparse.ArgumentParser(description=doc.splitlines()[0])
  ap.add_argument("--sweep", default="", help="space-separated block,num_warps pairs for the kernel")
  text = ap.parse_args().sweep
  return [tuple(int(v) for v in item.split(",")) for item in text.split()] or [
      (kernel_module.BLOCK, kernel_module.NUM_WARPS)]


def compare(label, gbytes, args, ref_fn, kernel_module, kernel_fn, sweep):
  """Prints ms per call and TB/s over the minimum `gbytes` for jit(ref_fn) and for jit(kernel_fn) at
  each sweep setting, with the kernel's largest difference from the reference's outputs."""
  ref_fn = jax.jit(ref_fn)
  ref = ref_fn(*args)
  t = seconds_per_call(ref_fn, *args)
  print(f"{label}  xla     {t * 1e3:7.3f} ms  {gbytes / t / 1e3:5.2f} TB/s", flush=True)
  for block, warps in sweep:
    kernel_module.BLOCK, kernel_module.NUM_WARPS = block, warps
    fn = jax.jit(lambda *a: kernel_fn(*a))  # a new function each setting, traced with the module's new values
    got = fn(*args)
    err = max(float(jnp.max(jnp.abs(g.astype(jnp.float32) - r.astype(jnp.float32)))) for g, r in zip(got, ref))
    t = seconds_per_call(fn, *args)
    print(f"{label}  pallas block={block} warps={warps}  {t * 1e3:7.3f} ms  "
          f"{gbytes / t / 1e3:5.2f} TB/s  max diff {err:.2e}", flush=True)
