"""MLA attention on one GPU: which implementation `attention_impl` picks and what each one costs.

Usage (one GPU, JAX 0.11.2):
  python benchmarks/mla_attention.py [--seq 4096] [--out DIR]

Times causal attention fwd+bwd in bf16, B=1, through moejax.layers.attention.attend (v zero-padded
to the q/k head dim when they differ) with implementation cudnn and xla, for MLA's shapes
(DeepSeek-V3: 128 heads, q/k 192, v 128; V2-Lite: 16 heads) and a GQA reference with head dim 128
(Mixtral: 32 heads, 8 KV heads); then the whole MLASelfAttention layer of DeepSeek-V3 width
(hidden 7168) with `auto`. Useful TFLOP/s count 2·S²/2·N·(Dqk + Dv) per forward, 3× for fwd+bwd.
A table is printed last (DIR/mla_attention.json too with --out).
"""
from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import AttentionSpec, MLASpec, ModelSpec
from moejax.kernels.grouped_gemm.autotune import seconds_per_call
from moejax.layers.attention import attend, attention_impl
from moejax.layers.mla import MLASelfAttention

SHAPES = {  # name: (heads, kv heads, q/k head dim, v head dim)
    "deepseek_v3 MLA": (128, 128, 192, 128),
    "deepseek_v2_lite MLA": (16, 16, 192, 128),
    "mixtral GQA (reference)": (32, 8, 128, 128),
}


def _time(fn, *args):
  return seconds_per_call(fn, *args) * 1e3


def _mla_spec(impl: str) -> ModelSpec:
  return ModelSpec(dtype="bfloat16", params_dtype="bfloat16", hidden_size=7168,
                   attention=AttentionSpec(num_attention_heads=128, num_query_groups=128, attention_impl=impl,
                                           qk_layernorm=True,
                                           mla=MLASpec(multi_latent_attention=True, q_lora_rank=1536)))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--seq", type=int, default=4096)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  S, rows = args.seq, []
  print("jax", jax.__version__, jax.devices()[0].device_kind, "auto picks:", attention_impl(_mla_spec("auto")))
  key = jax.random.key(0)
  for name, (N, K, Dqk, Dv) in SHAPES.items():
    q = jax.random.normal(key, (1, S, N, Dqk), jnp.bfloat16)
    k = jax.random.normal(key, (1, S, K, Dqk), jnp.bfloat16)
    v = jax.random.normal(key, (1, S, K, Dv), jnp.bfloat16)
    flops = 3 * 2 * S * S / 2 * N * (Dqk + Dv)
    for impl in ("cudnn", "xla"):
      spec = ModelSpec(dtype="bfloat16", attention=AttentionSpec(attention_impl=impl))
      loss = lambda q, k, v: jnp.sum(attend(q, k, v, None, spec, Dqk ** -0.5).astype(jnp.float32))  # noqa: E731,B023
      step = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
      try:
        ms = _time(step, q, k, v)
        rows.append(dict(case=name, impl=impl, ms=round(ms, 3), tflops=round(flops / ms / 1e9, 1)))
      except Exception as e:  # an implementation that refuses the shape is a result too
        rows.append(dict(case=name, impl=impl, ms=None, tflops=None, error=str(e).splitlines()[0][:120]))
  for impl in ("auto", "xla"):
    spec = _mla_spec(impl)
    layer = MLASelfAttention(spec)
    x = jax.random.normal(key, (1, S, 7168), jnp.bfloat16)
    pos = jnp.arange(S)[None]
    params = nn.unbox(jax.jit(layer.init)(key, x, pos))
    loss = lambda p, x: jnp.sum(layer.apply(p, x, pos).astype(jnp.float32))  # noqa: E731,B023
    step = jax.jit(jax.grad(loss, argnums=(0, 1)))
    rows.append(dict(case="deepseek_v3 MLASelfAttention layer", impl=f"{impl} ({attention_impl(spec)})",
                     ms=round(_time(step, params, x), 3), tflops=None))
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    json.dump(rows, open(os.path.join(args.out, "mla_attention.json"), "w"), indent=1)
  print(f"\nS={S}, B=1, bf16, causal, fwd+bwd")
  print(f"{'case':38s} {'impl':16s} {'ms':>9s} {'TFLOP/s':>8s}")
  for r in rows:
    ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
    tf = "-" if r["tflops"] is None else f"{r['tflops']:.0f}"
    print(f"{r['case']:38s} {r['impl']:16s} {ms:>9s} {tf:>8s} {r.get('error', '')}")


if __name__ == "__main__":
  main()
