"""The layout planner's memory estimate against the compiled train step on this device.

  python benchmarks/plan_memory.py --config configs/proxies/mixtral_width.py \
      --layers 1,2 --micro_batch 1,4 --micro_batches 1,2 --recompute none,selective,full \
      [--out FILE.jsonl] [--config.a.b=v]

For each case (layers x micro-batch x micro-batches a step x recompute choice; one device) it
compiles the train step as train.py does, with nothing allocated, and prints XLA's
`memory_analysis()` of it (arguments + temporaries + outputs - aliased) beside
`moejax.plan.memory.layout_memory` for the same model, layout and choice, in its form for this
backend: the planner's error. tests/plan/golden/ keeps an H100's output, which a test holds the
planner to. Keep the cases below the device's memory: XLA's GPU compiler rematerializes a step
that does not fit, which changes what it holds.
"""
from __future__ import annotations

import itertools
import json

import jax
from absl import app, flags
from ml_collections import config_flags

from moejax.config import model_spec
from moejax.layers.attention import cudnn_takes
from moejax.metrics.memory import compiled_bytes
from moejax.plan.memory import SELECTIVE, layout_memory
from moejax.train.step import compile_for_shapes

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config().")
_LAYERS = flags.DEFINE_list("layers", ["1", "2"], "Decoder layers of each case.")
_MICRO = flags.DEFINE_list("micro_batch", ["1"], "Micro-batch sizes.")
_ACCUM = flags.DEFINE_list("micro_batches", ["1"], "Micro-batches a step (gradient accumulation).")
_RECOMPUTE = flags.DEFINE_list("recompute", ["none"], "Recompute choices: none, selective, full.")
_OUT = flags.DEFINE_string("out", None, "Append each case as a JSON line to this file.")


def case_config(base, layers: int, micro: int, micro_batches: int, recompute: str):
  cfg = base.copy_and_resolve_references()
  cfg.model.num_layers = layers
  cfg.train.update(micro_batch_size=micro, global_batch_size=micro * micro_batches)
  cfg.train.recompute_granularity = None if recompute == "none" else recompute
  if recompute == "selective":
    cfg.train.recompute_modules = SELECTIVE
  return cfg


def compiled_memory(cfg) -> tuple[dict, object]:
  """XLA's memory_analysis of the one-device train step of `cfg`, in bytes, and its layout's sizes."""
  compiled, parts = compile_for_shapes(cfg, jax.devices()[:1])
  m = compiled.memory_analysis()
  out = dict(arguments=m.argument_size_in_bytes, temporaries=m.temp_size_in_bytes, outputs=m.output_size_in_bytes,
             aliased=m.alias_size_in_bytes)
  out["total"] = compiled_bytes(m)
  return out, parts.layout.sizes


def main(argv):
  del argv
  base = _CONFIG.value
  backend = "gpu" if jax.default_backend() == "gpu" else "cpu"
  print(f"== {jax.devices()[0].device_kind} | JAX {jax.__version__} | planner backend={backend}")
  head = (f"{'layers':>6} {'micro':>5} {'accum':>5} {'recompute':<9} {'args GB':>8} {'temp GB':>8} {'compiled':>8} "
          f"{'planner':>8} {'plan/comp':>9}  planner: weights grads optim activ")
  lines = [head]
  config_file = config_flags.get_config_filename(flags.FLAGS["config"])
  for layers, micro, accum, recompute in itertools.product(map(int, _LAYERS.value), map(int, _MICRO.value),
                                                           map(int, _ACCUM.value), _RECOMPUTE.value):
    cfg = case_config(base, layers, micro, accum, recompute)
    comp, sizes = compiled_memory(cfg)
    spec = model_spec(cfg)
    impl = spec.attention.attention_impl
    flash = impl == "cudnn" or impl == "auto" and cudnn_takes(spec) and backend == "gpu"
    est = layout_memory(spec, sizes, cfg.train.seq_length, micro, sequence_parallel=cfg.parallel.sequence_parallel,
                        flash=flash, recompute=recompute, distributed_optimizer=cfg.optim.use_distributed_optimizer,
                        micro_batches=accum, backend=backend)
    row = dict(config=config_file, device=jax.devices()[0].device_kind, jax=jax.__version__, layers=layers,
               micro_batch=micro, micro_batches=accum, seq=cfg.train.seq_length, recompute=recompute, flash=flash,
               compiled=comp, planner=dict(weights=est.weights, gradients=est.gradients, optimizer=est.optimizer,
                                           activations=est.activations, total=est.total))
    if _OUT.value:
      with open(_OUT.value, "a") as f:
        f.write(json.dumps(row) + "\n")
    lines.append(f"{layers:>6} {micro:>5} {accum:>5} {recompute:<9} {comp['arguments'] / 1e9:>8.2f} "
                 f"{comp['temporaries'] / 1e9:>8.2f} {comp['total'] / 1e9:>8.2f} {est.total / 1e9:>8.2f} "
                 f"{est.total / comp['total']:>9.3f}  {est.weights / 1e9:.2f} {est.gradients / 1e9:.2f} "
                 f"{est.optimizer / 1e9:.2f} {est.activations / 1e9:.2f}")
    print(lines[-1], flush=True)
  print("\n".join(lines))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
