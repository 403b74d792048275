"""Where a new run's step-0 state comes from: a random init, the weights of
`checkpoint.load_params` (weights-only checkpoint with the router state it came with, training
workdir or one of its checkpoints; saved with either layout of the layers, `model.scan_layers`),
or, with `moe.use_upcycling`, a dense model's weights upcycled into this MoE model
(moejax/moe/upcycling.py), saved as checkpoint 0 before training starts."""
from __future__ import annotations

import sys

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from moejax.checkpoint.manager import CheckpointManager, load_weights, params_metadata
from moejax.config import ConfigError
from moejax.models.decoder import relayout, stack_layers, unstack_layers
from moejax.models.gpt import GPTModel
from moejax.moe.upcycling import upcycle_layer
from moejax.train.state import TrainState, init_params, init_state, param_shardings


def upcycle_params(dense: dict, moe: dict, dense_pattern, moe_pattern, spec) -> dict:
  """The MoE model's params from the dense model's: every MoE layer upcycled from its dense MLP,
  dense layers, attention, norms, embedding and head copied; `moe` gives the router's init."""
  dense_layers = unstack_layers(dense["decoder"], dense_pattern)
  moe_layers = unstack_layers(moe["decoder"], moe_pattern)
  layers = [upcycle_layer(d, m, spec) if is_moe else d for d, m, is_moe in zip(dense_layers, moe_layers, moe_pattern)]
  decoder = {k: v for k, v in dense["decoder"].items() if not k.startswith(("segment_", "layer_"))}
  return {**dense, "decoder": {**decoder, **stack_layers(layers, moe_pattern, spec.scan_layers)}}


def _stacked_sharding(layers):
  sh = layers[0]  # one layer's sharding: the stack adds a leading, unsharded layers axis
  return NamedSharding(sh.mesh, P(None, *sh.spec)) if isinstance(sh, NamedSharding) else sh


def _layer_sharding(sh, _):
  return NamedSharding(sh.mesh, P(*sh.spec[1:])) if isinstance(sh, NamedSharding) else sh


def saved_scan_layers(src: str, flag: str = "checkpoint.load_params") -> bool | None:
  """The `model.scan_layers` the weights in `src` were saved with (None: no decoder layers)."""
  decoder = (params_metadata(src, flag) or {}).get("decoder", {})
  if any(k.startswith("segment_") for k in decoder):
    return True
  return False if any(k.startswith("layer_") for k in decoder) else None


def load_as_run(src: str, spec, abstract: dict, shardings: dict, flag: str = "checkpoint.load_params") -> dict:
  """`load_weights(src, abstract, shardings)` ({"params", "moe_state"}) from weights saved with either
  layout of the decoder's layers: restored as they were saved, then laid out as this model's on the
  device (for that moment the weights are there twice)."""
  saved = saved_scan_layers(src, flag)
  if saved is None or saved == spec.scan_layers:
    return load_weights(src, abstract, shardings, flag)

  def to(scan_layers, **ops):
    relaid = lambda t: {**t, "decoder": relayout(t["decoder"], spec.moe_pattern, scan_layers, **ops)}  # noqa: E731
    return lambda items: {k: relaid(t) if "decoder" in (t or {}) else t for k, t in items.items()}

  restored = load_weights(src, jax.eval_shape(to(saved), abstract),
                          to(saved, stack=_stacked_sharding, take=_layer_sharding)(shardings), flag)
  found = {k: t for k, t in restored.items() if t is not None}
  return {**restored, **jax.jit(to(spec.scan_layers), out_shardings={k: shardings[k] for k in found})(found)}


def _upcycled(cfg, model: GPTModel, shardings: TrainState, mesh, rules):
  spec, t = model.spec, cfg.train
  dense_spec = spec.replace(num_experts=None, use_upcycling=False)
  dense_abstract, dense_shardings, _ = param_shardings(GPTModel(dense_spec), t.seq_length, mesh, rules)
  src = cfg.checkpoint.load_params
  dense = load_as_run(src, dense_spec, {"params": dense_abstract}, {"params": dense_shardings})["params"]
  moe = init_params(model, t.seq_length, t.seed, shardings.params)
  upcycle = lambda d, m: upcycle_params(d, m, dense_spec.moe_pattern, spec.moe_pattern, spec)  # noqa: E731
  return jax.jit(upcycle, out_shardings=shardings.params)(dense, moe)


def initial_state(cfg, model: GPTModel, optimizer, abstract: TrainState, shardings: TrainState,
                  ckpt: CheckpointManager, mesh, rules) -> TrainState:
  """A step-0 state (fresh optimizer) in `shardings`."""
  src, t = cfg.checkpoint.load_params, cfg.train
  params = moe_state = None
  if cfg.moe.use_upcycling:
    if not src:
      raise ConfigError(["moe.use_upcycling=True needs checkpoint.load_params=DIR: the dense run (or its "
                         "weights) to build the experts from"])
    params = _upcycled(cfg, model, shardings, mesh, rules)
  elif src:
    loaded = load_as_run(src, model.spec, {"params": abstract.params, "moe_state": abstract.moe_state},
                         {"params": shardings.params, "moe_state": shardings.moe_state})
    params, moe_state = loaded["params"], loaded["moe_state"]  # router state: e.g. the expert biases
  state = init_state(model, optimizer, t.seq_length, t.seed, shardings, params)
  if moe_state is not None:
    state = state.replace(moe_state=moe_state)
  if cfg.moe.use_upcycling:
    ckpt.save(0, state, force=True)
    print(f"upcycled the dense weights of {src} into {model.spec.moe.num_experts} experts (granularity "
          f"{model.spec.moe.upcycling_granularity}); saved as checkpoint 0", file=sys.stderr)
  elif src:
    print(f"loaded the weights of {src}; step 0, fresh optimizer", file=sys.stderr)
  return state
