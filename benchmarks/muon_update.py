"""The optimizer update of a recipe's parameters alone: moejax's Muon (optim.optimizer='muon') and
AdamW, beside emerging_optimizers' Muon in torch (the class megatron-core's TensorParallelMuon
subclasses) over the same matrices held as Megatron holds them (one parameter per expert), with torch's
fused AdamW on the rest. Random fp32 masters and gradients; no model step.

  python benchmarks/muon_update.py jax --config configs/proxies/qwen3_30b_width.py [--config.a.b=v ...]
      [--iters 10] --shapes FILE.json        # times moejax's two updates, writes the torch side's shapes
  python benchmarks/muon_update.py torch --shapes FILE.json [--iters 10]

Each prints one line `name ms/update` per optimizer (medians of `--iters` updates, each waited for, after two
untimed ones).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def _jax(argv):
  import jax
  import jax.numpy as jnp
  import numpy as np
  from absl import flags
  from flax import linen as nn
  from ml_collections import config_flags

  from moejax.config import model_spec
  from moejax.models.gpt import GPTModel
  from moejax.train.muon import matrix_view
  from moejax.train.optim import make_optimizer, muon_labels

  cfg_flag = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config().")
  flags.DEFINE_integer("iters", 10, "Timed updates.")
  flags.DEFINE_string("shapes", None, "Write the torch side's shapes here.")
  flags.FLAGS(argv)
  cfg, iters = cfg_flag.value, flags.FLAGS.iters
  model = GPTModel(model_spec(cfg))
  abstract = nn.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))))["params"]
  keys = iter(jax.random.split(jax.random.key(1), 2 * len(jax.tree.leaves(abstract))))
  params = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype) * 0.02, abstract)
  grads = jax.tree.map(lambda a: jax.random.normal(next(keys), a.shape, a.dtype) * 1e-3, abstract)
  rows = []
  for name in ("adam", "muon"):
    cfg.optim.optimizer = name
    opt = make_optimizer(cfg)
    state = jax.jit(opt.init)(params)

    def step(p, s, g, opt=opt):
      u, s = opt.update(g, s, p)
      return jax.tree.map(lambda a, b: a + b, p, u), s

    f = jax.jit(step, donate_argnums=(0, 1))
    times = []
    for i in range(iters + 2):
      t0 = time.perf_counter()
      params, state = f(params, state, grads)
      jax.block_until_ready(params)
      if i >= 2:
        times.append(time.perf_counter() - t0)
    rows.append((f"moejax {name}", statistics.median(times) * 1e3))
    del state
  if flags.FLAGS.shapes:
    matrices, rest = [], []
    owners = jax.tree.leaves(muon_labels(abstract))
    for (path, leaf), owner in zip(jax.tree_util.tree_flatten_with_path(abstract)[0], owners):
      if owner == "adam":
        rest.append(list(leaf.shape))
        continue
      view = matrix_view(path)
      name = getattr(path[-1], "key", None)
      if name == "up":  # Megatron's linear_fc1 holds gate and up
        continue
      nb = leaf.ndim - view.in_ndim - view.out_ndim
      d_in = int(np.prod(leaf.shape[nb:nb + view.in_ndim]))
      d_out = int(np.prod(leaf.shape[nb + view.in_ndim:])) * (2 if name == "gate" else 1)
      matrices += [[d_out, d_in]] * int(np.prod(leaf.shape[:nb]))  # one [out, in] parameter per layer and expert
    json.dump({"matrices": matrices, "rest": rest, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay},
              open(flags.FLAGS.shapes, "w"))
  return rows


def _torch(argv):
  import torch
  from emerging_optimizers.orthogonalized_optimizers import Muon

  p = argparse.ArgumentParser()
  p.add_argument("--shapes", required=True)
  p.add_argument("--iters", type=int, default=10)
  a = p.parse_args(argv)
  spec = json.load(open(a.shapes))
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
  make = lambda s: torch.nn.Parameter(torch.randn(*s, device=dev) * 0.02)  # noqa: E731
  matrices, rest = [make(s) for s in spec["matrices"]], [make(s) for s in spec["rest"]]
  for q in matrices + rest:
    q.grad = torch.randn_like(q) * 1e-3
  # megatron-core 0.16.1's defaults (OptimizerConfig: muon_momentum 0.95, no Nesterov, quintic, 5 steps,
  # spectral scale, bf16 iterations)
  muon = Muon(matrices, lr=spec["lr"], momentum=0.95, weight_decay=spec["weight_decay"], nesterov=False,
              fp32_matmul_prec="medium", coefficient_type="quintic", num_ns_steps=5, scale_mode="spectral")
  fused = dev == "cuda"
  adam = torch.optim.AdamW(rest, lr=spec["lr"], weight_decay=spec["weight_decay"], betas=(0.9, 0.95), fused=fused)
  rows = []
  for name, opts in (("adam", [torch.optim.AdamW(matrices + rest, lr=spec["lr"], betas=(0.9, 0.95), fused=fused)]), ("muon", [muon, adam])):
    times = []
    for i in range(a.iters + 2):
      sync()
      t0 = time.perf_counter()
      for o in opts:
        o.step()
      sync()
      if i >= 2:
        times.append((time.perf_counter() - t0) * 1e3)
    what = "fused AdamW" if name == "adam" else f"emerging_optimizers Muon on {len(matrices)} matrices, fused AdamW"
    rows.append((f"torch {name} ({what})", statistics.median(times)))
    for o in opts:
      o.state.clear()
  return rows


if __name__ == "__main__":
  side, argv = sys.argv[1], sys.argv[2:]
  for name, ms in (_jax([sys.argv[0]] + argv) if side == "jax" else _torch(argv)):
    print(f"{name}: {ms:.1f} ms/update")
