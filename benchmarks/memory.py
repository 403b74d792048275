"""What each memory option buys on one GPU: selective recompute, activation offload and optimizer-state
offload each let a Mixtral-width proxy (H 4096, 8 experts top-2 of F 14336, 32/8 heads, vocab 32000,
fp32 master weights + AdamW, bf16 compute) train more layers than the baseline fits, at a step-time
cost this reports against the memory saved.

  source benchmarks/device_env.sh; cd /tmp/pp
  python3 benchmarks/memory.py --out $OUT               # one H200, ~5 min; a table is printed last
  python3 benchmarks/memory.py --layers 3 --micro-batch 8 --variants optimizer_offload,recompute_moe
  python3 benchmarks/memory.py --compile-only --layers 1 --micro-batch 4 \
      --variants recompute_core_attn,recompute_moe_act,recompute_layernorm,recompute_moe
  python benchmarks/memory.py --cpu-smoke               # the same logic on the CPU at tiny widths

Variants: `selective_recompute` (core_attn, moe_act, layernorm), `recompute_<module>` (one
module), `activation_offload` (all seven offload names), `optimizer_offload` (all of it);
`--variants` picks which to compare with the baseline (default: OPTIONS), `--compile-only` reports
compiled memory alone (and compares the options at L+1 only).

Plan (a probe process, tracing only): the activation bytes each variant keeps per token and layer
(`moejax.metrics.memory.saved_activation_bytes`) and the state bytes per layer give a micro-batch
whose activations weigh about as much as a layer's state, and L, the most layers the baseline is
predicted to fit. Then one process per case (a clean allocator each; XLA_PYTHON_CLIENT_MEM_FRACTION
0.95): baseline at L (timed), baseline at L+1 (compiled; run once to see it fail), each option at
L+1 (timed: it fits) and at L (timed: the step-time cost at equal size). Memory per case is the
compiled step's (`memory_analysis()`: arguments + temporaries + outputs - aliased) and the device's
peak after the run. A deadline skips what is left and still prints the table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = {  # name: config overrides (section, key, value)
    "baseline": (),
    "selective_recompute": (("train", "recompute_granularity", "selective"),
                            ("train", "recompute_modules", ("core_attn", "moe_act", "layernorm"))),
    "activation_offload": (("train", "offload_modules", ("attn_norm", "qkv_linear", "core_attn", "attn_proj",
                                                          "mlp_norm", "expert_fc1", "moe_act")),),
    "optimizer_offload": (("optim", "optimizer_cpu_offload", 1.0),),
    **{f"recompute_{m}": (("train", "recompute_granularity", "selective"), ("train", "recompute_modules", (m,)))
       for m in ("core_attn", "moe_act", "layernorm", "moe", "mlp")},
}
OPTIONS = ("selective_recompute", "recompute_moe", "activation_offload", "optimizer_offload")  # the default run
WIDTHS = {
    "mixtral": dict(hidden_size=4096, ffn_hidden_size=14336, num_attention_heads=32, num_query_groups=8,
                    vocab_size=32000, seq=4096),
    "tiny": dict(hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                 vocab_size=512, seq=64),
}


def make_config(width: str, layers: int, micro: int, variant: str):
  from moejax.config import base_config
  w = dict(WIDTHS[width])
  seq = w.pop("seq")
  c = base_config()
  c.model.update(num_layers=layers, dtype="bfloat16", params_dtype="float32", **w)
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=w["ffn_hidden_size"], aux_loss_coeff=1e-2)
  c.train.update(seq_length=seq, micro_batch_size=micro, global_batch_size=micro)
  c.data.source = "synthetic"
  for section, key, value in VARIANTS[variant]:
    c[section][key] = value
  return c


def probe(args) -> dict:
  """Per variant: activation bytes kept per token for each layer and outside the layers (traced at
  one and two layers); the device's memory limit; state bytes per layer."""
  import jax
  import jax.numpy as jnp
  from flax import linen as nn

  from moejax.config import model_spec
  from moejax.metrics.flops import num_params
  from moejax.metrics.memory import saved_activation_bytes
  from moejax.models.gpt import GPTModel
  from moejax.train.loss import loss_fn
  seq = WIDTHS[args.width]["seq"]
  out = {"jax": jax.__version__, "device": jax.devices()[0].device_kind}
  stats = jax.devices()[0].memory_stats() or {}
  out["limit"] = stats.get("bytes_limit", args.cpu_limit_gb * 1e9)
  spec1, spec2 = (model_spec(make_config(args.width, L, 1, "baseline")) for L in (1, 2))
  out["params_per_layer"] = num_params(spec2) - num_params(spec1)
  out["params_outside"] = num_params(spec1) - out["params_per_layer"]
  tokens = jax.ShapeDtypeStruct((1, seq + 1), jnp.int32)
  for variant in ("baseline", *args.variants):
    kept = []
    for L in (1, 2):
      model = GPTModel(model_spec(make_config(args.width, L, 1, variant)))
      params = jax.eval_shape(lambda m=model: nn.unbox(m.init(jax.random.key(0), jnp.zeros((1, seq), jnp.int32))["params"]))
      kept.append(saved_activation_bytes(lambda p, t, m=model: loss_fn(m, p, t)[0], params, tokens))
    out[variant] = dict(per_layer=(kept[1][0] - kept[0][0]) / seq, outside=(2 * kept[0][0] - kept[1][0]) / seq,
                        host_per_layer=(kept[1][1] - kept[0][1]) / seq)
  return out


def predict(plan: dict, variant: str, layers: int, micro: int) -> float:
  """Device bytes: state (fp32 masters, grads, and moments unless offloaded), kept activations,
  and 20% for what one layer's backward pass holds at once."""
  seq = plan["seq"]
  state = 8 if variant == "optimizer_offload" else 16
  act = plan[variant]
  params = plan["params_per_layer"] * layers + plan["params_outside"]
  return 1.2 * (state * params + micro * seq * (act["per_layer"] * layers + act["outside"]))


def choose(plan: dict) -> tuple[int, int]:
  """(micro-batch, layers): activations about the state of a layer, the most layers the baseline
  fits with 5% to spare."""
  seq, base = plan["seq"], plan["baseline"]
  micro = max(1, min(32, round(0.8 * 16 * plan["params_per_layer"] / (base["per_layer"] * seq))))
  layers = 1
  while predict(plan, "baseline", layers + 1, micro) < 0.95 * plan["limit"] and layers < 64:
    layers += 1
  return micro, layers


def run_case(args, variant: str, layers: int, micro: int, execute: bool) -> dict:
  """Compiles one step; with `execute`, inits the state and times `args.iters` steps."""
  import jax
  from flax import linen as nn

  from moejax.metrics.memory import compiled_bytes
  from moejax.parallel.sharding import batch_sharding
  from moejax.train.state import init_state
  from moejax.train.step import compile_for_shapes
  cfg = make_config(args.width, layers, micro, variant)
  row = dict(variant=variant, layers=layers, micro_batch=micro, seq=cfg.train.seq_length)
  t0 = time.perf_counter()
  compiled, parts = compile_for_shapes(cfg, jax.devices()[:1])
  row["compile_s"] = round(time.perf_counter() - t0, 1)
  m = compiled.memory_analysis()
  row["compiled_gb"] = compiled_bytes(m) / 1e9
  row["host_gb"] = (getattr(m, "host_argument_size_in_bytes", 0) + getattr(m, "host_temp_size_in_bytes", 0)) / 1e9
  if not execute:
    return row
  with jax.set_mesh(parts.layout.mesh), nn.logical_axis_rules(parts.rules):
    try:
      state = init_state(parts.model, parts.optimizer, cfg.train.seq_length, 0, parts.shardings)
      batch = jax.device_put(jax.random.randint(jax.random.key(1), (1, micro, cfg.train.seq_length + 1), 0,
                                                cfg.model.vocab_size), batch_sharding(parts.layout.mesh, parts.rules, 3))
      times = []
      for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        loss = float(metrics["loss"])
        if i >= args.warmup:
          times.append(time.perf_counter() - t0)
      row.update(step_ms=1e3 * statistics.median(times), loss=loss, fits=True)
      stats = jax.devices()[0].memory_stats() or {}
      if "peak_bytes_in_use" in stats:
        row["peak_gb"] = stats["peak_bytes_in_use"] / 1e9
    except Exception as e:  # noqa: BLE001 -- an out-of-memory is a result here
      text = str(e)
      row.update(fits=False, error=("out of memory" if "RESOURCE_EXHAUSTED" in text or "Out of memory" in text
                                    else f"{type(e).__name__}: {text[:300]}"))
  return row


def _child(args, payload: dict, timeout: float) -> dict:
  """Runs one probe or case in a fresh process; its last stdout line is the JSON result."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(payload), "--width", args.width,
         "--iters", str(args.iters), "--warmup", str(args.warmup), "--cpu-limit-gb", str(args.cpu_limit_gb),
         "--variants", ",".join(args.variants)]
  try:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=max(timeout, 1))
  except subprocess.TimeoutExpired:
    return dict(payload, error="deadline")
  lines = [line for line in p.stdout.splitlines() if line.startswith("{")]
  if p.returncode != 0 or not lines:
    return dict(payload, error=f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
  return json.loads(lines[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default=".")
  ap.add_argument("--width", default="mixtral", choices=sorted(WIDTHS))
  ap.add_argument("--iters", type=int, default=3)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--deadline", type=float, default=285.0, help="seconds for the whole run")
  ap.add_argument("--micro-batch", type=int, default=0, help="override the planned micro-batch")
  ap.add_argument("--layers", type=int, default=0, help="override the planned baseline layers")
  ap.add_argument("--cpu-smoke", action="store_true", help="tiny widths on the CPU, a 0.05 GB 'device'")
  ap.add_argument("--cpu-limit-gb", type=float, default=0.05)
  ap.add_argument("--variants", default=",".join(OPTIONS),
                  help=f"options to compare with the baseline, of {sorted(VARIANTS)}")
  ap.add_argument("--compile-only", action="store_true", help="compiled memory of each case, nothing run")
  ap.add_argument("--child", default="")
  args = ap.parse_args()
  args.variants = [v for v in args.variants.split(",") if v and v != "baseline"]
  unknown = set(args.variants) - set(VARIANTS)
  if unknown:
    ap.error(f"--variants: unknown {sorted(unknown)}; choose from {sorted(VARIANTS)}")
  if args.cpu_smoke:
    args.width = "tiny"
    os.environ["JAX_PLATFORMS"] = "cpu"
  if args.child:
    payload = json.loads(args.child)
    if payload["kind"] == "probe":
      out = probe(args)
    else:
      out = run_case(args, payload["variant"], payload["layers"], payload["micro"], payload["execute"])
    print(json.dumps(out), flush=True)
    return
  t_end = time.time() + args.deadline
  plan = _child(args, dict(kind="probe"), t_end - time.time())
  if "error" in plan:
    sys.exit(f"probe failed: {plan['error']}")
  plan["seq"] = WIDTHS[args.width]["seq"]
  micro, layers = choose(plan)
  micro, layers = args.micro_batch or micro, args.layers or layers
  print(json.dumps(dict(plan=plan, micro_batch=micro, layers=layers)), flush=True)
  run = not args.compile_only
  cases = [("baseline", layers, run), ("baseline", layers + 1, run)]
  cases += [(v, layers + 1, run) for v in args.variants]
  cases += [(v, layers, run) for v in args.variants if run]  # the step-time cost at equal size
  rows = []
  for variant, L, execute in cases:
    if time.time() > t_end:
      rows.append(dict(variant=variant, layers=L, micro_batch=micro, error="deadline"))
      continue
    row = _child(args, dict(kind="case", variant=variant, layers=L, micro=micro, execute=execute), t_end - time.time())
    row["predicted_gb"] = predict(plan, variant, L, micro) / 1e9
    rows.append(row)
    print(json.dumps(row), flush=True)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"memory_{args.width}.json"), "w") as f:
    json.dump(dict(plan=plan, micro_batch=micro, layers=layers, rows=rows), f, indent=1)
  print_table(plan, rows)


def print_table(plan, rows):
  base = {r["layers"]: r for r in rows if r["variant"] == "baseline" and "compiled_gb" in r}
  print(f"\n== {plan['device']} | JAX {plan['jax']} | limit {plan['limit'] / 1e9:.1f} GB | "
        f"seq {plan['seq']} | {plan['params_per_layer'] / 1e9:.2f}B params per layer")
  print(f"{'variant':20} {'layers':>6} {'mb':>3} {'fits':>5} {'step ms':>8} {'cost':>7} {'compiled GB':>11} "
        f"{'saved GB':>8} {'peak GB':>7}")
  for r in rows:
    ref = base.get(r["layers"])
    saved = ref["compiled_gb"] - r["compiled_gb"] if ref and "compiled_gb" in r else None
    cost = r["step_ms"] / ref["step_ms"] - 1 if ref and r.get("step_ms") and ref.get("step_ms") and ref is not r else None
    fits = "yes" if r.get("fits") else ("no" if r.get("error") == "out of memory" else r.get("error", "-")[:5])
    print(f"{r['variant']:20} {r['layers']:>6} {r.get('micro_batch', r.get('micro', '-')):>3} {fits:>5} "
          f"{r.get('step_ms', float('nan')):8.1f} {'' if cost is None else f'{100 * cost:+.0f}%':>7} "
          f"{r.get('compiled_gb', float('nan')):11.1f} {'' if saved is None else f'{saved:.1f}':>8} "
          f"{r.get('peak_gb', float('nan')):7.1f}")


if __name__ == "__main__":
  main()
