"""MoE layer forward+backward per dispatcher and exchange primitive, with the exchange/compute split.

Usage (one process per XLA flag set; XLA_FLAGS must be set before JAX starts):
  python benchmarks/moe_layer.py --out DIR --tag default [--models mixtral,qwen3] [--eps 2,4]
      [--tokens 8192] [--deadline 240] [--cpu-smoke]

For each (model width, EP) it times, on all local devices (EP × EDP = devices):
  full           the MoE layer (router, dispatch, grouped experts, combine) fwd+bwd, bf16
  compute-only   the same program with the token collectives swapped for local
                 stand-ins of the same shapes (a `Collectives` subclass passed to
                 the layer); full − compute-only = exposed exchange time
and, separately, the exchange alone: a plain tiled all_to_all of the routed bytes
(T·K rows) against Collectives.exchange with each primitive and buffer bound.
The router runs with forced load balancing (random logits), as Megatron's
benchmarks do. Results: DIR/moe_layer_<tag>.json; a table is printed last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.config import base_config, model_spec
from moejax.moe.dispatch import Collectives
from moejax.moe import dispatch
from moejax.moe.layer import MoELayer
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules

MODELS = {  # hidden, expert ffn, experts, topk
    "mixtral": dict(hidden_size=4096, ffn=14336, experts=8, topk=2),
    "qwen3": dict(hidden_size=2048, ffn=768, experts=128, topk=8),
    "tiny": dict(hidden_size=64, ffn=128, experts=8, topk=2),  # CPU smoke test of this script
}
VARIANTS = {  # name: (dispatcher, exchange primitive, exchange_capacity_factor), most important first
    "allgather": ("allgather", "all_to_all", None),
    "a2a_pad_cf1.1": ("alltoall", "all_to_all", 1.1),
    "a2a_ragged": ("alltoall", "ragged_all_to_all", None),
    "a2a_pad_worst": ("alltoall", "all_to_all", None),
}


def _time(fn, *args, iters=5, warmup=2):
  out = None
  for _ in range(warmup):
    out = fn(*args)
  jax.block_until_ready(out)
  ts = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    ts.append(time.perf_counter() - t0)
  return statistics.median(ts) * 1e3


@dataclasses.dataclass(frozen=True)
class ComputeOnly(Collectives):
  """Local stand-ins of the same shapes for the token collectives of a group of `group` devices."""
  group: int = 1

  def exchange(self, x, send_counts, recv_counts, axes):
    return x

  def gather(self, v, axes):
    return jnp.tile(v, (self.group,) + (1,) * (v.ndim - 1))

  def scatter(self, v, axes):
    return v[: v.shape[0] // self.group]


def _setup(model: str, ep: int, tokens_per_device: int, dtype: str, devices):
  m = MODELS[model]
  n = len(devices)
  cfg = base_config()
  seq = 4096 if tokens_per_device >= 4096 else tokens_per_device
  cfg.model.update(hidden_size=m["hidden_size"], num_attention_heads=16, num_query_groups=8,
                   ffn_hidden_size=m["ffn"], vocab_size=256, dtype=dtype)
  cfg.moe.update(num_experts=m["experts"], router_topk=m["topk"], ffn_hidden_size=m["ffn"],
                 router_force_load_balancing=True)
  cfg.train.update(seq_length=seq, global_batch_size=n * tokens_per_device // seq)
  cfg.parallel.update(ep=ep)
  layout = make_mesh(cfg, devices)
  rules = logical_axis_rules(layout, False)
  spec = model_spec(cfg)
  B = n * tokens_per_device // seq
  return layout, rules, spec, (B, seq, m["hidden_size"])


def _layer_fns(spec, layout, rules, shape, variant, collectives=None):
  kind, prim, cf = VARIANTS[variant]
  spec = spec.replace(token_dispatcher_type=kind, token_exchange=prim, exchange_capacity_factor=cf)
  layer = MoELayer(spec, collectives)
  mesh = layout.mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    x_sh = NamedSharding(mesh, P(*nn.logical_to_mesh_axes(("batch", "seq", "embed"))))
    boxed = jax.eval_shape(layer.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    p_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)["params"]

  def loss(p, x):
    out, _ = layer.apply({"params": p}, x)
    return jnp.sum(out.astype(jnp.float32) ** 2) * 1e-6

  init = jax.jit(lambda k, x: nn.unbox(layer.init(k, x)["params"]), out_shardings=p_sh)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  return init, step, x_sh


def bench_layer(model, ep, args, devices, results):
  layout, rules, spec, shape = _setup(model, ep, args.tokens, args.dtype, devices)
  mesh = layout.mesh
  variants = list(VARIANTS) if ep == max(args.eps) else ["allgather", "a2a_pad_cf1.1"]
  if args.variants:
    variants = [v for v in variants if v in args.variants.split(",")]
  params = None
  for variant in variants:
    for mode in ("full", "compute_only"):
      if time.time() > args.t_end:
        results.append(dict(model=model, ep=ep, variant=variant, mode=mode, skipped="deadline"))
        continue
      if mode == "compute_only" and variant == "a2a_ragged":
        continue  # same compute as a2a_pad_worst
      row = dict(model=model, ep=ep, variant=variant, mode=mode, tokens_per_device=args.tokens)
      try:
        stand_ins = ComputeOnly(VARIANTS[variant][1], ep) if mode == "compute_only" else None
        init, step, x_sh = _layer_fns(spec, layout, rules, shape, variant, stand_ins)
        with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
          x = jax.device_put(jax.random.normal(jax.random.key(1), shape, jnp.float32).astype(spec.dtype), x_sh)
          if params is None:
            params = init(jax.random.key(0), x)
          t0 = time.perf_counter()
          compiled = step.lower(params, x).compile()
          row["compile_s"] = round(time.perf_counter() - t0, 1)
          row["ms"] = _time(compiled, params, x, iters=args.iters)
      except Exception as e:  # report and go on: one failing case must not hide the others
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
      print(json.dumps(row), flush=True)
      results.append(row)


def bench_exchange(model, ep, args, devices, results):
  """Exchange alone over ep ranks: routed rows T·K of H bf16, balanced counts."""
  m = MODELS[model]
  n = len(devices)
  mesh = jax.sharding.Mesh(np.asarray(devices).reshape(n // ep, ep), ("edp", "ep"))
  T, K, H, G = args.tokens, m["topk"], m["hidden_size"], ep
  rows = T * K
  counts = np.full((G,), rows // G, np.int32)
  cases = {"plain_all_to_all": rows // G}
  cases.update({"pad_worst": dispatch.exchange_rows_per_rank(T, K, G, None),
                "pad_cf1.1": dispatch.exchange_rows_per_rank(T, K, G, 1.1),
                "ragged_worst": dispatch.exchange_rows_per_rank(T, K, G, None)})
  for name, C in cases.items():
    if time.time() > args.t_end:
      results.append(dict(kind="exchange", model=model, ep=ep, case=name, skipped="deadline"))
      continue
    row = dict(kind="exchange", model=model, ep=ep, case=name, routed_mib=rows * H * 2 / 2**20, rows_per_pair=C)
    try:
      def body(x, c):
        x = x.reshape(G, C, H)
        if name == "plain_all_to_all":
          return jax.lax.all_to_all(x.reshape(G * C, H), "ep", 0, 0, tiled=True)
        prim = "ragged_all_to_all" if name.startswith("ragged") else "all_to_all"
        return Collectives(prim).exchange(x, c[0], c[0], ("ep",)).reshape(G * C, H)

      f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(("edp", "ep")), P(("edp", "ep"))),
                                out_specs=P(("edp", "ep"))))
      x = jax.device_put(jax.random.normal(jax.random.key(0), (n * G * C, H), jnp.bfloat16),
                         NamedSharding(mesh, P(("edp", "ep"))))
      c = jax.device_put(jnp.tile(jnp.asarray(counts)[None], (n, 1)), NamedSharding(mesh, P(("edp", "ep"))))
      row["ms"] = _time(f, x, c, iters=10)
      row["routed_gib_per_s"] = rows * H * 2 * (G - 1) / G / 2**30 / (row["ms"] / 1e3)
    except Exception as e:
      row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    print(json.dumps(row), flush=True)
    results.append(row)


def check_agreement(devices):
  """fp32, small: every variant's output and input gradient equal allgather's."""
  n = len(devices)
  cfg = base_config()
  cfg.model.update(hidden_size=64, num_attention_heads=4, num_query_groups=4, vocab_size=256, dtype="float32")
  cfg.moe.update(num_experts=2 * n, router_topk=2, ffn_hidden_size=128)
  cfg.train.update(seq_length=64, global_batch_size=n)
  cfg.parallel.update(ep=n)
  layout = make_mesh(cfg, devices)
  rules = logical_axis_rules(layout, False)
  base = model_spec(cfg).replace(grouped_gemm_impl="xla")
  x = jax.random.normal(jax.random.key(1), (n, 64, 64))
  params = nn.unbox(MoELayer(base).init(jax.random.key(0), x)["params"])
  outs = {}
  for variant, (kind, prim, cf) in VARIANTS.items():
    spec = base.replace(token_dispatcher_type=kind, token_exchange=prim, exchange_capacity_factor=cf)
    f = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(MoELayer(spec).apply({"params": p}, x)[0] ** 2),
                                   argnums=(0, 1)))
    try:
      with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
        outs[variant] = jax.device_get(f(params, x))
    except Exception as e:
      outs[variant] = f"{type(e).__name__}: {str(e)[:200]}"
  ref = outs["allgather"]
  report = {}
  for k, v in outs.items():
    if isinstance(v, str):
      report[k] = v
    else:
      report[k] = max(float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
                      for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(ref)))
  return report


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=".")
  ap.add_argument("--tag", default="default")
  ap.add_argument("--models", default="mixtral,qwen3")
  ap.add_argument("--eps", default="2,4")
  ap.add_argument("--variants", default="")
  ap.add_argument("--tokens", type=int, default=8192, help="tokens per device")
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--iters", type=int, default=5)
  ap.add_argument("--deadline", type=float, default=240.0, help="seconds; later cases are reported as skipped")
  ap.add_argument("--no-exchange", action="store_true")
  ap.add_argument("--no-check", action="store_true")
  args = ap.parse_args()
  args.t_end = time.time() + args.deadline
  args.eps = [int(e) for e in args.eps.split(",")]
  devices = jax.devices()
  header = dict(tag=args.tag, jax=jax.__version__, devices=len(devices), device_kind=devices[0].device_kind,
                xla_flags=os.environ.get("XLA_FLAGS", ""))
  print(json.dumps(header), flush=True)
  results = []
  if not args.no_check:
    header["agreement_rel_err_vs_allgather"] = check_agreement(devices)
    print(json.dumps(header["agreement_rel_err_vs_allgather"]), flush=True)
  models = args.models.split(",")
  t0 = time.time()
  for i, model in enumerate(models):  # each model gets its share of the deadline
    args.t_end = t0 + args.deadline * (i + 1) / len(models)
    for ep in args.eps:
      if ep > len(devices) or len(devices) % ep:
        continue
      if not args.no_exchange:
        bench_exchange(model, ep, args, devices, results)
      bench_layer(model, ep, args, devices, results)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"moe_layer_{args.tag}.json"), "w") as f:
    json.dump(dict(header=header, results=results), f, indent=1)
  print_table(header, results)


def print_table(header, results):
  print(f"\n== {header['tag']} | {header['device_kind']} x{header['devices']} | JAX {header['jax']} | "
        f"XLA_FLAGS={header['xla_flags']!r}")
  full = {(r["model"], r["ep"], r["variant"]): r for r in results
          if r.get("mode") == "full" and "ms" in r}
  comp = {(r["model"], r["ep"], r["variant"]): r for r in results
          if r.get("mode") == "compute_only" and "ms" in r}
  print(f"{'model':8} {'ep':>2} {'variant':14} {'fwd+bwd ms':>10} {'compute ms':>10} {'exposed xchg':>12}")
  for key, r in full.items():
    c = comp.get(key) or comp.get((key[0], key[1], "a2a_pad_worst") if key[2] == "a2a_ragged" else None)
    cm = c["ms"] if c else float("nan")
    frac = (r["ms"] - cm) / r["ms"] if c else float("nan")
    print(f"{key[0]:8} {key[1]:>2} {key[2]:14} {r['ms']:10.2f} {cm:10.2f} {100 * frac:11.1f}%")
  ex = [r for r in results if r.get("kind") == "exchange" and "ms" in r]
  if ex:
    print(f"{'model':8} {'ep':>2} {'exchange':18} {'ms':>8} {'GiB/s':>8} {'vs plain':>8}")
    plain = {(r["model"], r["ep"]): r["ms"] for r in ex if r["case"] == "plain_all_to_all"}
    for r in ex:
      rel = plain.get((r["model"], r["ep"]), float("nan")) / r["ms"]
      print(f"{r['model']:8} {r['ep']:>2} {r['case']:18} {r['ms']:8.3f} {r['routed_gib_per_s']:8.1f} {100 * rel:7.0f}%")
  errs = [r for r in results if "error" in r]
  for r in errs:
    print("ERROR", r.get("model"), r.get("ep"), r.get("variant", r.get("case")), r.get("mode", ""), r["error"][:160])


if __name__ == "__main__":
  main()
