"""Pipeline parallelism as a forward-backward schedule: micro-batches through pp stages in one jit.

`pipeline(plan, kind)` returns a `ForwardBackward` (moejax/train/schedule.py) that runs the tick
tables of moejax/parallel/pipeline.py inside one `jax.shard_map` manual over the `pp` mesh axis
(the attention/MoE axes stay automatic, so TP, SP, EP, CP and folding work inside a stage as
without pp). Per tick, every rank:

1. keeps the input of the micro-batch it starts (the activation from the previous rank) in its
   store, with a snapshot of its MoE state;
2. forward: runs that virtual stage and sends the output up the ring (`ppermute` +1);
3. backward: recomputes the virtual stage it finishes from the stored input (`jax.vjp`), adds
   the parameter gradients, and sends the input's cotangent down the ring (`ppermute` −1). The
   loss stage does its forward here too (head, loss and backward in one vjp).

All ranks run the same program in lockstep (XLA collectives must not sit under control flow
that differs between ranks), so a rank without work in a tick computes on masked data; a tick
in which no rank has forward (backward) work skips that half. Activation memory per rank is the
store (`Schedule.slots` inputs, independent of the number of micro-batches for 1f1b) plus one
virtual stage's activations. See docs/PIPELINE.md.

The MoE state threads through each layer's micro-batches in order (as in gradient accumulation):
forwards commit it, backwards recompute from the snapshot their forward saw.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.models.gpt import model_inputs
from moejax.models.stages import StagePlan
from moejax.parallel.pipeline import make_schedule, pipeline_layout
from moejax.parallel.sharding import current_mesh
from moejax.train.loss import moe_loss_scale, step_loss_tokens, token_weights
from moejax.train.schedule import StepResult, compute_params, gradient_accumulation


def _stage_sharding(mesh, logical_specs, staged):
  """[pp, n, ...] stacks: rows over pp, the rest as the decoder's parameter (its `layers` axis dropped)."""
  def one(spec, leaf):
    rest = nn.logical_to_mesh_axes(tuple(spec)[1:])
    return NamedSharding(mesh, P("pp", None, *rest))
  return jax.tree.map(one, logical_specs, staged, is_leaf=lambda x: isinstance(x, P))


def pipeline(plan: StagePlan, kind: str = "1f1b", logical_specs=None):
  """The pipelined forward-backward schedule of `plan` (`kind`: 1f1b or gpipe).

  logical_specs: the params' logical PartitionSpecs (nn.get_partition_spec of the boxed params);
  with them the regrouped stacks keep the parameters' sharding inside each stage.
  """
  layout, spec = plan.layout, plan.spec
  pp = layout.pp

  def forward_backward(model, params, moe_state, batch_NBS1, rng=None, main_grads=None) -> StepResult:
    m = batch_NBS1.shape[0]
    sched = make_schedule(pp, layout.vpp, m, kind)
    mesh = current_mesh()
    compute = compute_params(params, spec.dtype)
    staged = plan.stage_tree(compute["decoder"])
    if logical_specs is not None:
      specs = [logical_specs["decoder"][srcs[0][0]][srcs[0][1]] for srcs in plan.sources]
      staged = tuple(None if a is None else jax.lax.with_sharding_constraint(a, _stage_sharding(mesh, sp, a))
                     for a, sp in zip(staged, specs))
    shared = {k: v for k, v in compute.items() if k != "decoder"}
    shared["final_norm"] = compute["decoder"]["final_norm"]
    ms_staged = plan.stage_tree((moe_state or {}).get("decoder", {}))
    tables = tuple(jnp.asarray(t) for t in (sched.f_store, sched.f_run, sched.f_micro, sched.f_chunk, sched.f_slot,
                                            sched.b_run, sched.b_micro, sched.b_chunk, sched.b_slot))
    any_f, any_b = jnp.asarray(sched.f_run.any(1)), jnp.asarray(sched.b_run.any(1))
    has_e, has_l = jnp.asarray(plan.has_embedding), jnp.asarray(plan.has_loss)

    def body(staged, shared, ms_staged, batch_NBS1, rng):
      rank = jax.lax.axis_index("pp")
      layers = jax.tree.map(lambda a: a[0], staged)
      ms = jax.tree.map(lambda a: a[0], ms_staged)
      B, S = batch_NBS1.shape[1], batch_NBS1.shape[2] - 1
      loss_tokens = step_loss_tokens(model, batch_NBS1)
      x0 = jnp.zeros((B, S, spec.hidden_size), jnp.dtype(spec.dtype))
      head_params = shared

      def virtual_stage(layers, head_params, ms, x_BSH, micro, chunk, with_loss):
        tokens_BS1 = jax.lax.dynamic_index_in_dim(batch_NBS1, micro, keepdims=False)
        inputs_BS, labels_BS = tokens_BS1[:, :-1], tokens_BS1[:, 1:]
        inp = model_inputs(spec, inputs_BS, None, labels_BS, token_weights(inputs_BS, model, loss_tokens))
        r = None if rng is None else jax.random.fold_in(rng, micro)
        x_BSH = jnp.where(has_e[rank, chunk], plan.embed(head_params, inp.tokens_BS, r), x_BSH)
        x_BSH, stats, ms = plan.forward(rank, chunk, layers, ms, x_BSH, inp.positions_BS, inp.segments_BS, r)
        loss = (jnp.sum(stats["aux_loss"]) + jnp.sum(stats["z_loss"])) * moe_loss_scale(inputs_BS, loss_tokens)
        lm = jnp.zeros((), jnp.float32)
        if with_loss:
          lm = jnp.where(has_l[rank, chunk], plan.head_loss(head_params, x_BSH, inp.labels_BS,
                                                            inp.loss_weights_BS), 0.0)
        return (x_BSH, loss + lm), (lm, stats, ms)

      def tick(carry, xs):
        store, ms_store, ms, recv_x, recv_g, grads, loss_acc, metrics = carry
        (f_store, f_run, f_micro, f_chunk, f_slot, b_run, b_micro, b_chunk, b_slot), run_f, run_b = xs
        at = lambda t: t[rank]  # noqa: E731
        f_store, f_run, f_micro, f_chunk, f_slot = map(at, (f_store, f_run, f_micro, f_chunk, f_slot))
        b_run, b_micro, b_chunk, b_slot = map(at, (b_run, b_micro, b_chunk, b_slot))
        keep = lambda buf, new: jax.lax.dynamic_update_index_in_dim(  # noqa: E731
            buf, jnp.where(f_store, new, jax.lax.dynamic_index_in_dim(buf, f_slot, keepdims=False)), f_slot, 0)
        store = keep(store, recv_x)
        ms_store = jax.tree.map(keep, ms_store, ms)

        def fwd(ms):
          (y, _), (_, _, ms_new) = virtual_stage(layers, head_params, ms, recv_x, f_micro, f_chunk, False)
          return y, jax.tree.map(lambda new, old: jnp.where(f_run, new, old), ms_new, ms)

        out_x, ms = jax.lax.cond(run_f, fwd, lambda ms: (x0, ms), ms)

        def bwd(args):
          ms, grads, loss_acc, metrics = args
          is_loss = has_l[rank, b_chunk]
          x_in = jax.lax.dynamic_index_in_dim(store, b_slot, keepdims=False)
          snapshot = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, b_slot, keepdims=False), ms_store)
          ms_in = jax.tree.map(lambda live, snap: jnp.where(is_loss, live, snap), ms, snapshot)
          f = lambda lp, hp, x: virtual_stage(lp, hp, ms_in, x, b_micro, b_chunk, True)  # noqa: E731
          (_, loss), vjp, (lm, stats, ms_new) = jax.vjp(f, layers, head_params, x_in, has_aux=True)
          g_y = jnp.where(b_run & ~is_loss, recv_g, 0).astype(recv_g.dtype)
          g_layers, g_head, g_x = vjp((g_y, jnp.where(b_run, 1.0 / m, 0.0).astype(loss.dtype)))
          add = lambda acc, g: acc + jnp.where(b_run, g, 0).astype(acc.dtype)  # noqa: E731
          grads = jax.tree.map(add, grads, (g_layers, g_head))
          loss_acc = loss_acc + jnp.where(b_run, loss, 0.0)
          metrics = jax.tree.map(add, metrics, {"lm_loss": lm, **stats})
          ms = jax.tree.map(lambda new, old: jnp.where(b_run & is_loss, new, old), ms_new, ms)
          return g_x, (ms, grads, loss_acc, metrics)

        def no_bwd(args):
          return x0, args

        out_g, (ms, grads, loss_acc, metrics) = jax.lax.cond(run_b, bwd, no_bwd, (ms, grads, loss_acc, metrics))
        recv_x = jax.lax.ppermute(out_x, "pp", [(j, (j + 1) % pp) for j in range(pp)])
        recv_g = jax.lax.ppermute(out_g, "pp", [(j, (j - 1) % pp) for j in range(pp)])
        return (store, ms_store, ms, recv_x, recv_g, grads, loss_acc, metrics), None

      f32 = lambda t: jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), t)  # noqa: E731
      metrics0 = {"lm_loss": jnp.zeros((), jnp.float32), **plan.zero_stats()}
      carry = (jnp.zeros((sched.slots,) + x0.shape, x0.dtype),
               jax.tree.map(lambda a: jnp.zeros((sched.slots,) + a.shape, a.dtype), ms),
               ms, x0, x0, f32((layers, head_params)), jnp.zeros((), jnp.float32), metrics0)
      carry, _ = jax.lax.scan(tick, carry, (tables, any_f, any_b))
      _, _, ms, _, _, (g_layers, g_head), loss_acc, metrics = carry
      g_head, loss_acc, metrics = jax.lax.psum((g_head, loss_acc, metrics), "pp")
      lead = lambda t: jax.tree.map(lambda a: a[None], t)  # noqa: E731
      return lead(g_layers), g_head, lead(ms), loss_acc, metrics

    stage_spec = lambda t: jax.tree.map(lambda _: P("pp"), t)  # noqa: E731
    run = jax.shard_map(
        body, mesh=mesh, axis_names={"pp"}, check_vma=False,
        in_specs=(stage_spec(staged), P(), stage_spec(ms_staged), P(), P()),
        out_specs=(stage_spec(staged), P(), stage_spec(ms_staged), P(), P()))
    g_layers, g_head, ms_staged, loss, metrics = run(staged, shared, ms_staged, batch_NBS1, rng)
    grads = {k: g_head[k] for k in shared if k != "final_norm"}
    grads["decoder"] = {**plan.unstage_tree(g_layers, params["decoder"]), "final_norm": g_head["final_norm"]}
    # summed in fp32 inside the stages; then onto the main-grads buffer (schedule.py)
    grads = main_grads(grads) if main_grads else jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    if moe_state:
      moe_state = {**moe_state, "decoder": plan.unstage_tree(ms_staged, moe_state["decoder"])}
    return StepResult(loss / m, _step_metrics(metrics, m, plan.num_moe_layers), grads, moe_state or {})

  return forward_backward


def _step_metrics(acc, m, num_moe_layers):
  """The metrics of `gradient_accumulation`: means over the micro-batches, token counts summed."""
  if not num_moe_layers:
    zero = jnp.zeros((), jnp.float32)
    return dict(lm_loss=acc["lm_loss"] / m, aux_loss=zero, z_loss=zero, tokens_per_expert=jnp.zeros((0, 0)))
  return dict(lm_loss=acc["lm_loss"] / m, aux_loss=jnp.sum(acc["aux_loss"]) / m, z_loss=jnp.sum(acc["z_loss"]) / m,
              tokens_per_expert=acc["tokens_per_expert"], moe_dropped_fraction=acc["dropped_fraction"] / m,
              moe_losses={k: v / m for k, v in acc["logs"].items()})


def forward_backward_of(cfg, model, seq_len: int):
  """The config's forward-backward schedule: `gradient_accumulation` for pp = 1, else `pipeline`
  over `pipeline_layout(cfg)` (call under the run's `nn.logical_axis_rules`)."""
  if cfg.parallel.pp == 1:
    return gradient_accumulation
  tokens = jax.ShapeDtypeStruct((1, seq_len), jnp.int32)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens)["params"]
  plan = StagePlan.build(model.spec, pipeline_layout(cfg))
  return pipeline(plan, cfg.parallel.pipeline_schedule, nn.get_partition_spec(boxed))


def describe_pipeline(cfg, num_micro: int) -> str:
  """The stages of every pp rank and the schedule's bubble fraction, printed at start."""
  layout = pipeline_layout(cfg)
  sched = make_schedule(layout.pp, layout.vpp, num_micro, cfg.parallel.pipeline_schedule)
  return f"pipeline stages (pp rank: virtual stages):\n{layout.describe()}\n{sched.describe()}"
