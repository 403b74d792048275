"""Megatron's dropout in training: hidden dropout (`model.hidden_dropout`) on the embedding's output and on
each attention and MLP/MoE output before its residual add, attention dropout (`model.attention_dropout`)
on the attention probabilities (moejax/layers/attention.py). Dropout is on where the module has a
'dropout' rng, which the train step gives (`step_rngs`) when a rate is above 0; evaluation and
`model.init` give none, so the same modules run without it."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


def step_rngs(rng: jax.Array | None) -> dict:
  """The model's rng streams for one micro-batch from its key: the routers' (jitter, forced balancing) and
  dropout's (its own fold, so a router's draws do not change when dropout is turned on)."""
  return {} if rng is None else {"router": rng, "dropout": jax.random.fold_in(rng, 1)}


def hidden_dropout(module: nn.Module, x: jax.Array, rate: float) -> jax.Array:
  """x with each element zeroed with probability `rate` and the rest divided by 1 - rate (Megatron's
  torch.nn.Dropout), in training only. nn.Dropout's computation, written as a function so that modules
  built in `setup` (the embedding) call it as compact ones do."""
  key = dropout_key(module, rate)
  if key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def dropout_key(module: nn.Module, rate: float) -> jax.Array | None:
  """A key for `rate`'s dropout in training (the module has a 'dropout' rng and rate > 0), else None."""
  return module.make_rng("dropout") if rate and module.has_rng("dropout") else None
