"""AdamW with decoupled weight decay (or Megatron's Muon on the layers' matrices, moejax/train/muon.py),
Megatron's learning-rate and weight-decay schedules (its decoupled learning rate for the embedding and
output layer too), global-norm clipping; optionally precision-aware (moments below fp32, update math in
fp32)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from moejax.data.batch_schedule import BatchSchedule
from moejax.train.muon import matrix_view, scale_by_muon


def schedule_lengths(cfg) -> tuple[float, float, float, float]:
  """(warmup, decay, WSD's annealing, weight decay's rise) in global batches of train.global_batch_size, the
  unit the schedules count in (`BatchSchedule.progress`): the optim.*_iters and train.train_iters as
  they are, or with train.train_samples Megatron's sample counts divided by the global batch."""
  o, t = cfg.optim, cfg.train
  if t.train_samples is None:
    decay = o.lr_decay_iters or t.train_iters
    warmup = o.lr_warmup_iters if o.lr_warmup_fraction is None else o.lr_warmup_fraction * decay
    return warmup, decay, o.lr_wsd_decay_iters or 0, t.train_iters
  gbs = t.global_batch_size
  decay = (o.lr_decay_samples or t.train_samples) / gbs
  warmup = o.lr_warmup_samples / gbs if o.lr_warmup_fraction is None else o.lr_warmup_fraction * decay
  return warmup, decay, (o.lr_wsd_decay_samples or 0) / gbs, t.train_samples / gbs


def lr_schedule(cfg, decoupled: bool = False) -> optax.Schedule:
  """Megatron's learning rate (OptimizerParamScheduler.get_lr) at a step counted from 0: linear
  warmup from optim.lr_warmup_init to optim.lr over lr_warmup_iters steps (or lr_warmup_fraction of
  the decay's), then optim.lr_decay_style
  down to optim.min_lr at lr_decay_iters (default train.train_iters), min_lr after; `constant` stays
  at lr. `decoupled`: that of Megatron's param group of the embedding and output layer, the same
  shape between optim.decoupled_lr and optim.decoupled_min_lr (None: min_lr). Written out rather
  than joined from optax's schedules, which have no WSD and no Megatron inverse-square-root;
  tests/train/test_optim.py holds it to megatron-core's scheduler. Lengths count as `schedule_lengths`
  says; under a batch ramp-up the step's position is the samples consumed before it (Megatron steps its
  scheduler by each step's batch; after a skipped non-finite step, which Megatron's scheduler does
  not count either, moejax counts the first `count` steps' batches, at most one batch's difference)."""
  o = cfg.optim
  style, lr, min_lr = o.lr_decay_style, o.lr, o.min_lr
  if decoupled:
    lr, min_lr = o.decoupled_lr, min_lr if o.decoupled_min_lr is None else o.decoupled_min_lr
  warmup, decay, anneal, _ = schedule_lengths(cfg)
  progress = BatchSchedule.of(cfg).progress
  samples = cfg.train.global_batch_size  # Megatron counts in samples, which only its clamps to 1 see

  def coefficient(n):
    """From 1 (lr) down to 0 (min_lr) over the decay."""
    ratio = jnp.clip((n - warmup) / max(decay - warmup, 1), 0.0, 1.0)
    if style == "linear":
      return 1.0 - ratio
    if style == "cosine":
      return 0.5 * (jnp.cos(jnp.pi * ratio) + 1.0)
    r = jnp.clip((n - (decay - anneal)) / anneal, 0.0, 1.0)
    return {"linear": lambda: 1.0 - r, "cosine": lambda: 0.5 * (jnp.cos(jnp.pi * r) + 1.0),
            "exponential": lambda: 2.0 * 0.5 ** r - 1.0, "minus_sqrt": lambda: 1.0 - jnp.sqrt(r)}[o.lr_wsd_decay_style]()

  def schedule(step):
    n = progress(step)
    if style == "constant":
      after = jnp.full_like(n, lr)
    elif style == "inverse-square-root":
      after = jnp.maximum(min_lr, lr * max(warmup * samples, 1) ** 0.5 / jnp.sqrt(jnp.maximum(n * samples, 1.0)))
    else:
      after = min_lr + coefficient(n) * (lr - min_lr)
    if style != "constant":
      after = jnp.where(n > decay, min_lr, after)
    if not warmup:
      return after
    return jnp.where(n <= warmup, o.lr_warmup_init + (lr - o.lr_warmup_init) * n / warmup, after)

  return schedule


def weight_decay_schedule(cfg) -> optax.Schedule:
  """Megatron's weight decay (OptimizerParamScheduler.get_wd) at a step counted from 0: from
  optim.start_weight_decay to optim.end_weight_decay over train.train_iters steps or train.train_samples
  (Megatron's wd_incr_steps), rising along a line or half a cosine (optim.weight_decay_incr_style), then
  end_weight_decay."""
  o = cfg.optim
  start, end, steps = o.start_weight_decay, o.end_weight_decay, schedule_lengths(cfg)[3]
  progress = BatchSchedule.of(cfg).progress

  def schedule(step):
    ratio = jnp.clip(progress(step) / steps, 0.0, 1.0)
    coeff = ratio if o.weight_decay_incr_style == "linear" else 0.5 * (jnp.cos(jnp.pi * (1.0 - ratio)) + 1.0)
    return start + coeff * (end - start)

  return schedule


def decay_mask(params):
  """Weight decay on matrices only: not on norm scales or biases (Megatron's default)."""
  def keep(path, leaf):
    names = [getattr(k, "key", "") for k in path]
    return not any(n in ("scale", "bias") for n in names)
  return jax.tree_util.tree_map_with_path(keep, params)


def is_embedding_or_output_parameter(path) -> bool:
  """Megatron's attribute of that name: the input embedding's table (also the output layer when
  tied) and the untied output layer's kernel. The MTP depths use these two and own neither."""
  return getattr(path[0], "key", None) in ("embedding", "output_layer")


def scale_by_learning_rate(cfg) -> optax.GradientTransformation:
  """optax.scale_by_learning_rate(lr_schedule(cfg)), with optim.decoupled_lr the embedding and
  output layer's updates scaled by their own schedule (Megatron's decoupled param group) instead;
  the state is optax's either way (one step count), so checkpoints restore across the setting."""
  lr = lr_schedule(cfg)
  if cfg.optim.decoupled_lr is None:
    return optax.scale_by_learning_rate(lr)
  decoupled = lr_schedule(cfg, decoupled=True)

  def update(updates, state, params=None):
    del params
    main, emb = -lr(state.count), -decoupled(state.count)
    updates = jax.tree_util.tree_map_with_path(
        lambda path, u: jnp.asarray(emb if is_embedding_or_output_parameter(path) else main, u.dtype) * u, updates)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(optax.scale_by_schedule(lr).init, update)


def adamw(cfg) -> optax.GradientTransformation:
  """optax.adamw's chain (Adam, decoupled weight decay on `decay_mask`, times the learning rate, as
  torch's AdamW in Megatron) with Megatron's weight-decay schedule and decoupled learning rate. A
  constant decay stays a float: optax keeps a step count in the state only for a scheduled one."""
  o = cfg.optim
  return optax.chain(optax.scale_by_adam(b1=o.adam_beta1, b2=o.adam_beta2, eps=o.adam_eps),
                     optax.add_decayed_weights(_weight_decay(cfg), decay_mask), scale_by_learning_rate(cfg))


def _weight_decay(cfg):
  o = cfg.optim
  return o.weight_decay if o.weight_decay_incr_style == "constant" else weight_decay_schedule(cfg)


def muon_labels(params):
  """"muon" or "adam" per parameter: Megatron's Muon takes the 2-D weights but the embedding and output
  layer's (`muon.matrix_view` says which are matrices and how)."""
  def label(path, _):
    return "adam" if is_embedding_or_output_parameter(path) or matrix_view(path) is None else "muon"
  return jax.tree_util.tree_map_with_path(label, params)


def muon(cfg) -> optax.GradientTransformation:
  """Megatron's Muon with AdamW beside it: the layers' matrices by their orthogonalized momentum,
  decoupled weight decay and the learning rate's schedule; the rest (`muon_labels`) by `adamw`."""
  matrices = optax.chain(scale_by_muon(cfg), optax.add_decayed_weights(_weight_decay(cfg)),
                         scale_by_learning_rate(cfg))
  return optax.multi_transform({"muon": matrices, "adam": adamw(cfg)}, muon_labels)


STATE_DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}  # optim.*_dtype settings


def keep_state_dtypes(inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """`inner` whose state leaves every update in the dtypes it came in. optax's Adam promotes bf16
  moments (those of bf16 masters, or stored below fp32 by `precision_aware`) to the fp32 gradients'
  dtype; a compiled train step takes its own output only while the state's types hold."""
  def update(grads, state, params=None):
    updates, new = inner.update(grads, state, params)
    return updates, jax.tree.map(lambda n, o: n.astype(o.dtype), new, state)

  return optax.GradientTransformation(inner.init, update)


def precision_aware(inner: optax.GradientTransformation, exp_avg_dtype: str = "fp32",
                    exp_avg_sq_dtype: str = "fp32") -> optax.GradientTransformation:
  """Megatron's precision-aware optimizer: Adam's moments stored in `exp_avg_dtype` /
  `exp_avg_sq_dtype`, every update computed in fp32 (state, gradients and params upcast, the new
  moments rounded once to their storage dtype). optax's own `mu_dtype` covers the first moment
  only and does its math in the storage dtype."""
  mu_dtype, nu_dtype = STATE_DTYPES[exp_avg_dtype], STATE_DTYPES[exp_avg_sq_dtype]
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731

  def store(state):
    def cast(s):
      if not is_adam(s):
        return s
      return s._replace(mu=jax.tree.map(lambda m: m.astype(mu_dtype), s.mu),
                        nu=jax.tree.map(lambda v: v.astype(nu_dtype), s.nu))
    return jax.tree.map(cast, state, is_leaf=is_adam)

  def fp32(tree):
    return jax.tree.map(lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)

  def init(params):
    return store(inner.init(fp32(params)))

  def update(grads, state, params=None):  # the new moments rounded to their stored dtypes by keep_state_dtypes
    return inner.update(fp32(grads), fp32(state), None if params is None else fp32(params))

  return keep_state_dtypes(optax.GradientTransformation(init, update))


def make_optimizer(cfg) -> optax.GradientTransformation:
  o = cfg.optim
  update = muon(cfg) if o.optimizer == "muon" else adamw(cfg)
  opt = optax.chain(optax.clip_by_global_norm(o.clip_grad) if o.clip_grad else optax.identity(), update)
  if o.use_precision_aware_optimizer:
    return precision_aware(opt, o.exp_avg_dtype, o.exp_avg_sq_dtype)
  return keep_state_dtypes(opt)
