"""One jitted train step: a forward-backward schedule over the micro-batches, then the optax update."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from moejax.layers.qk_clip import clip_qk, largest_logit
from moejax.models.gpt import GPTModel
from moejax.moe.state import finish_step
from moejax.parallel.sharding import batch_sharding, replicated
from moejax.train.optim import lr_schedule
from moejax.train.pipeline import forward_backward_of
from moejax.train.schedule import ForwardBackward, gradient_accumulation
from moejax.train.state import Setup, StatePlacement, TrainState, compute_copy, model_params, setup
from moejax.train.validate import validate


def make_train_step(model: GPTModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    forward_backward: ForwardBackward = gradient_accumulation,
                    placement: StatePlacement | None = None, check_finite: bool = True,
                    log_params_norm: bool = False, log_num_zeros_in_grad: bool = False):
  """step(state, batch [num_micro, b, seq+1]) -> (state, metrics).

  Metrics are means over the micro-batches, except `tokens_per_expert` [L, E]:
  the sum over the step, which also drives the expert-bias update after the
  optimizer step (counts come from forward values, so recompute cannot count twice).

  The model runs on `state.compute_params` where the state carries it (the previous update's
  bf16 copy of the masters held whole); the next copy is cast from the new masters, which XLA
  fuses into the update's pass over them (benchmarks/RESULTS.md, issue 18).

  With a `placement` (moejax.train.state), the model runs on its compute copy of the master
  params, gradients come back onto the masters' placement (a reduce-scatter with the distributed
  optimizer), and the update runs on the masters' shards in fp32; host-offloaded optimizer
  leaves visit the device for the update only.

  `check_finite` (train.check_for_nan_in_loss_and_grad): when the loss or the gradient norm is
  NaN or inf the step is skipped inside the jit (params, optimizer state and MoE state stay as
  they were; metric `skipped` = 1), with no host sync: the loop reads `skipped` from the metrics
  it fetches anyway. The step counter still advances, so the next step reads the next batch,
  while the optimizer's own count (Adam's bias correction, the learning-rate schedule) does not:
  Megatron's behaviour for a skipped iteration.

  `model.qk_clip` (Megatron's MuonClip) scales the attention layers' q and k weights after the update by
  the step's largest logits (moejax/layers/qk_clip.py); with it or `model.log_max_attention_logit` the
  metric `max_attention_logit` is the step's largest over all layers and heads.

  `log_params_norm` / `log_num_zeros_in_grad` (Megatron's --log-params-norm / --log-num-zeros-in-grad)
  add metrics `params_norm`, the L2 norm of the master params the step returns, and
  `num_zeros_in_grad`, the exact zeros of the gradients the optimizer sees (accumulated over the
  micro-batches). Both reduce global arrays, so each element counts once however the params are
  sharded or replicated.
  """
  router, attention = model.spec.moe.router, model.spec.attention
  needs_rng = (bool(router.input_jitter_eps) or router.router_force_load_balancing or model.spec.hidden_dropout > 0
               or attention.attention_dropout > 0)

  def step(state: TrainState, batch_NBS1: jax.Array):
    rng = jax.random.fold_in(jax.random.key(0), state.step) if needs_rng else None
    copy, params = state.compute_params, model_params(state)
    if placement is None:
      master_dtype = lambda grads: jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)  # noqa: E731
      out = forward_backward(model, params, state.moe_state, batch_NBS1, rng, main_grads=master_dtype)
      grads, opt_state = out.grads, state.opt_state
    else:
      out = forward_backward(model, placement.compute_params(params), state.moe_state, batch_NBS1, rng,
                             main_grads=placement.main_grads)
      grads = jax.tree.map(lambda g, p: g.astype(jnp.promote_types(p.dtype, jnp.float32)), out.grads, state.params)
      opt_state = placement.opt_state_on_device(state.opt_state, after=grads)
    grad_norm = optax.tree.norm(grads)
    updates, new_opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if attention.qk_clip:
      params = clip_qk(params, out.moe_state, model.spec)
    if placement is not None:
      params = jax.lax.with_sharding_constraint(params, placement.master)
    moe_state = finish_step(out.moe_state, router.router_bias_update_rate)
    lr = schedule(_update_count(state))
    new = (params, new_opt_state, moe_state)
    skipped = jnp.zeros((), jnp.float32)
    if check_finite:
      finite = jnp.isfinite(out.loss) & jnp.isfinite(grad_norm)
      old = (state.params, opt_state, state.moe_state)  # the optimizer state as the update saw it: on the device
      new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
      skipped = 1.0 - finite.astype(jnp.float32)
    # the next compute copy from the masters kept (not a select with the old copy: one read less)
    new = (*new, None if copy is None else compute_copy(copy, new[0], model.spec.dtype))
    if placement is not None:  # an offloaded optimizer state goes home only after the last use on the device
      new = (new[0], placement.opt_state_home(new[1]), *new[2:])
    metrics = dict(loss=out.loss, grad_norm=grad_norm, lr=lr, skipped=skipped, **out.metrics)
    if attention.qk_clip or attention.log_max_attention_logit:
      metrics["max_attention_logit"] = largest_logit(out.moe_state)
    if log_params_norm:
      metrics["params_norm"] = optax.tree.norm(jax.tree.map(lambda p: p.astype(jnp.float32), new[0]))
    if log_num_zeros_in_grad:
      metrics["num_zeros_in_grad"] = count_zeros(grads)
    return TrainState(state.step + 1, *new), metrics

  return step


def count_zeros(grads) -> jax.Array:
  """Exactly-zero entries of `grads` (Megatron's count_zeros_fp32): counted exactly per row in int32,
  the rows summed in fp32 as Megatron sums its per-parameter counts (no int32 overflow past 2^31)."""
  rows = [jnp.sum(jnp.atleast_1d(g) == 0, axis=-1, dtype=jnp.int32) for g in jax.tree.leaves(grads)]
  return sum((jnp.sum(r.astype(jnp.float32)) for r in rows), jnp.float32(0))


def _update_count(state: TrainState):
  """Updates applied so far: the optimizer's step count (behind `state.step` by the skipped steps)."""
  counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
  return counts[0][1] if counts else state.step


def jit_train_step(cfg, parts: Setup, metrics_sharding):
  """The train step of `cfg` jitted as train.py runs it: the config's forward-backward schedule
  (the pipeline for pp > 1), its finite check, the state donated, metrics placed by
  `metrics_sharding`. Call under the run's mesh and logical axis rules."""
  model, mesh = parts.model, parts.layout.mesh
  step = make_train_step(model, parts.optimizer, lr_schedule(cfg), forward_backward_of(cfg, model, cfg.train.seq_length),
                         placement=parts.placement, check_finite=cfg.train.check_for_nan_in_loss_and_grad,
                         log_params_norm=cfg.logging.log_params_norm,
                         log_num_zeros_in_grad=cfg.logging.log_num_zeros_in_grad)
  return jax.jit(step, in_shardings=(parts.shardings, batch_sharding(mesh, parts.rules, 3)),
                 out_shardings=(parts.shardings, metrics_sharding), donate_argnums=0)


def compile_for_shapes(cfg, devices) -> tuple[jax.stages.Compiled, Setup]:
  """The train step of `cfg` as train.py builds it, compiled on `devices` for abstract inputs
  (nothing allocated), and its `Setup`: what the memory benchmarks and tests read
  `memory_analysis()` from and, where they run it, initialise the state with."""
  validate(cfg, len(devices))
  parts = setup(cfg, devices)
  mesh, t, dp = parts.layout.mesh, cfg.train, parts.layout.sizes.dp
  with jax.set_mesh(mesh), nn.logical_axis_rules(parts.rules):
    tokens = jax.ShapeDtypeStruct((t.global_batch_size // (t.micro_batch_size * dp), t.micro_batch_size * dp,
                                   t.seq_length + 1), jnp.int32, sharding=batch_sharding(mesh, parts.rules, 3))
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), parts.abstract,
                         parts.shardings)
    return jit_train_step(cfg, parts, replicated(mesh)).lower(state, tokens).compile(), parts
