"""Where a new run's step-0 state comes from: a random init, the weights of
`checkpoint.load_params` (weights-only checkpoint with the router state it came with, training
workdir or one of its checkpoints),
or, with `moe.use_upcycling`, a dense model's weights upcycled into this MoE model
(moejax/moe/upcycling.py), saved as checkpoint 0 before training starts."""
from __future__ import annotations

import sys

import jax

from moejax.checkpoint.manager import CheckpointManager, load_moe_state, load_params
from moejax.config import ConfigError
from moejax.models.decoder import stack_layers, unstack_layers
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


def _upcycled(cfg, model: GPTModel, shardings: TrainState, mesh, rules):
  spec, t = model.spec, cfg.train
  dense_spec = spec.replace(num_experts=None, use_upcycling=False)
  dense_abstract, dense_shardings, _ = param_shardings(GPTModel(dense_spec), t.seq_length, mesh, rules)
  dense = load_params(cfg.checkpoint.load_params, dense_abstract, dense_shardings)
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
    params = load_params(src, abstract.params, shardings.params)
    moe_state = load_moe_state(src, abstract.moe_state, shardings.moe_state)  # e.g. converted expert biases
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
