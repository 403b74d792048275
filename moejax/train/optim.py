"""AdamW with decoupled weight decay, warmup + cosine schedule, global-norm clipping."""
from __future__ import annotations

import jax
import optax


def lr_schedule(cfg) -> optax.Schedule:
  """Linear warmup from 0 to optim.lr, then cosine (or constant) down to optim.min_lr."""
  o = cfg.optim
  decay_iters = o.lr_decay_iters or cfg.train.train_iters
  warmup = o.lr_warmup_iters
  if o.lr_decay_style == "constant":
    after = optax.constant_schedule(o.lr)
  else:
    after = optax.cosine_decay_schedule(o.lr, max(decay_iters - warmup, 1), alpha=o.min_lr / o.lr)
  if not warmup:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, o.lr, warmup), after], [warmup])


def decay_mask(params):
  """Weight decay on matrices only: not on norm scales or biases (Megatron's default)."""
  def keep(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    return not any(n in ("scale", "bias") for n in names)
  return jax.tree_util.tree_map_with_path(keep, params)


def make_optimizer(cfg) -> optax.GradientTransformation:
  o = cfg.optim
  return optax.chain(
      optax.clip_by_global_norm(o.clip_grad) if o.clip_grad else optax.identity(),
      optax.adamw(lr_schedule(cfg), b1=o.adam_beta1, b2=o.adam_beta2, eps=o.adam_eps,
                  weight_decay=o.weight_decay, mask=decay_mask))
