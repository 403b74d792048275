"""Forward-backward schedules: how one step's micro-batches run through the model.

A schedule is `fwd_bwd(model, params, moe_state, batch [num_micro, b, seq+1], rng, main_grads=None)
-> StepResult` with the loss and metrics averaged over the micro-batches, except
`tokens_per_expert`, summed over the step. `main_grads` maps one micro-batch's gradients onto the
buffer they are summed in (dtype and placement: moejax.train.state.StatePlacement.main_grads).
The train step takes the schedule as an argument, so pipeline parallelism is another schedule,
not another step.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from moejax.train.loss import loss_fn, step_loss_tokens


class StepResult(NamedTuple):
  loss: jax.Array
  metrics: dict
  grads: Any
  moe_state: Any


ForwardBackward = Callable[..., StepResult]


def compute_params(params, dtype):
  """The model's floating params in the compute dtype, cast once per step (Megatron's mixed
  precision: bf16 model params, fp32 main params and grads in the optimizer). The cast stays
  outside the layer scan and the micro-batch loop, so neither stores nor repeats it."""
  return jax.tree.map(lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)


def _materialized(grads):
  """One micro-batch's gradients written out before the optimizer reads them. With the layer loop
  unrolled (`model.scan_unroll`) a layer stack's gradient is the concatenation of its layers'
  gradients, and XLA fuses that concatenation into each consumer, splitting AdamW into one pass per
  output (params, first and second moments) that each re-read the gradients and moments; written
  out once (in the compute dtype), one fused pass per leaf reads each once (benchmarks/RESULTS.md,
  issue 18). Accumulated gradients are buffers already. One barrier per leaf, so that each leaf's
  reduction over data parallelism can still start as soon as that leaf's gradient exists."""
  return jax.tree.map(jax.lax.optimization_barrier, grads)


def gradient_accumulation(model, params, moe_state, batch_NBS1, rng=None, main_grads=None) -> StepResult:
  """Micro-batches one after another in a scan, gradients summed in the main-grads buffer (by
  default the params' own dtype) then averaged (Megatron's no-pipelining schedule). The MoE state
  (expert-bias counts) threads through in order."""
  n = batch_NBS1.shape[0]
  compute = compute_params(params, model.spec.dtype)
  main_grads = main_grads or (lambda grads: jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params))

  loss_tokens = step_loss_tokens(model, batch_NBS1)

  def grad_fn(p, m, t, r, lt):
    return jax.value_and_grad(lambda p: loss_fn(model, p, t, m, r, loss_tokens=lt), has_aux=True)(p)

  micro_batch = lambda i: jax.lax.dynamic_index_in_dim(batch_NBS1, i, keepdims=False)  # noqa: E731
  micro_rng = lambda i: None if rng is None else jax.random.fold_in(rng, i)  # noqa: E731

  def micro(carry, i):
    acc, moe_state = carry
    (loss, (metrics, moe_state)), grads = grad_fn(compute, moe_state, micro_batch(i), micro_rng(i), loss_tokens)
    return (jax.tree.map(jnp.add, acc, (loss, metrics, main_grads(grads))), moe_state), None

  moe_state = moe_state or {}
  if n == 1:  # no accumulators: a pass over every gradient saved
    (loss, (metrics, moe_state)), grads = grad_fn(compute, moe_state, batch_NBS1[0], micro_rng(0), loss_tokens)
    return StepResult(loss, metrics, main_grads(_materialized(grads)), moe_state)
  # One trace of forward+backward (~1 s less per build): jitted, grad_fn's trace for eval_shape is
  # reused in the scan body, whose micro-batch and key are made by the same ops (so of the same types).
  grad_fn = jax.jit(grad_fn)
  i0 = jnp.int32(0)
  (_, (metrics0, _)), grads0 = jax.eval_shape(grad_fn, compute, moe_state, micro_batch(i0), micro_rng(i0),
                                              loss_tokens)
  loss0, metrics0, grads0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                         (jax.ShapeDtypeStruct((), jnp.float32), metrics0, grads0))
  zeros = (loss0, metrics0, main_grads(grads0))  # the buffer where main_grads places it
  (acc, moe_state), _ = jax.lax.scan(micro, (zeros, moe_state), jnp.arange(n, dtype=jnp.int32))
  loss, metrics, grads = jax.tree.map(lambda v: v / n, acc)
  metrics["tokens_per_expert"] = acc[1]["tokens_per_expert"]  # summed over the step
  return StepResult(loss, metrics, grads, moe_state)
