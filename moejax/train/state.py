"""Train state (step, fp32 master params, optimizer state, MoE state, the masters' bf16 copy),
where each leaf lives, and how the step turns master params into the model's compute copy and
gradients back.

The master params are `TrainState.params` (`model.params_dtype`). Without the distributed
optimizer they sit where the model computes with them (their logical axes), and the model casts
them to `model.dtype` where it uses them. With it (ZeRO-1, `optim.use_distributed_optimizer`, on
by default) masters and Adam moments are sharded over the data-parallel devices, expert ones over
edp (moejax.parallel.sharding `shard_over_data`); each step casts the local shards to
`model.dtype` and all-gathers them once (the compute copy, as Megatron's bf16 params), gradients
come back onto the shards (reduce-scatter) and are summed over micro-batches in
`optim.main_grads_dtype`. With FSDP (`parallel.fsdp`) the decoder layers' compute copy is
gathered layer by layer inside the scan instead (moejax.models.decoder `gather_layer_weights`).
A leaf with no data axes to shard over (expert weights at edp=1) is kept and used as without the
distributed optimizer.

`TrainState.compute_params` keeps, of each master that every device holds whole, its cast to
`model.dtype` (Megatron's bf16 params beside the optimizer's fp32 main params): the update writes
it in its own pass over the masters, so no step starts with a pass that reads every such fp32
master to cast it. Masters sharded over data are cast on their shard (1/dp of the work) and
gathered, as before, and keep no copy (None in its tree). It costs 2 bytes per kept parameter
between steps and is not checkpointed: `checkpointed()` drops it (the checkpoint manager saves and
restores that view of a state), `with_compute_copy` casts it again after a restore.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from moejax.config import model_spec
from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE
from moejax.parallel.mesh import MeshLayout, make_mesh
from moejax.parallel.sharding import (current_mesh, fit_to_shapes, logical_axis_rules, optimizer_state_shardings,
                                      replicated, shard_over_data)
from moejax.train.optim import STATE_DTYPES, make_optimizer


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  moe_state: Any = None  # the `moe_state` collection (expert bias, step counters); {} when unused
  # the masters held whole, in `model.dtype`, written by the update (module docstring): None for
  # masters sharded over data, and None in all when no master keeps a copy
  compute_params: Any = None

  def checkpointed(self) -> TrainState:
    """The state as a checkpoint holds it: without the compute copy (derived from the masters)."""
    return self.replace(compute_params=None)


def _is_none(x) -> bool:
  return x is None


def compute_copy(like, params, dtype):
  """`TrainState.compute_params` of `params`: each leaf cast to `dtype` where `like` (a copy, or
  its shardings) has a leaf, None where it has None."""
  return jax.tree.map(lambda c, p: None if c is None else p.astype(dtype), like, params, is_leaf=_is_none)


def model_params(state: TrainState):
  """The params the model runs on: the compute copy where the state keeps one, else the masters."""
  if state.compute_params is None:
    return state.params
  return jax.tree.map(lambda c, p: p if c is None else c, state.compute_params, state.params, is_leaf=_is_none)


def with_compute_copy(state: TrainState, dtype, shardings: TrainState) -> TrainState:
  """`state` as restored from a checkpoint (without it) with its compute copy, in `shardings`."""
  if shardings.compute_params is None:
    return state
  copy = jax.jit(lambda p: compute_copy(shardings.compute_params, p, dtype),
                 out_shardings=shardings.compute_params)(state.params)
  return state.replace(compute_params=copy)


def _kept_copy(abstract_params, master_sh, logical_sh, dtype):
  """(abstract compute copy, its shardings): the masters' placement and `dtype` for each floating
  master that changes dtype and is not sharded over data (its sharding is its logical axes');
  None for the others, and None for both when no master keeps a copy."""
  dtype = jnp.dtype(dtype)

  def kept(a, master, logical):
    return jnp.issubdtype(a.dtype, jnp.floating) and a.dtype != dtype and master == logical

  sh = jax.tree.map(lambda a, m, l: m if kept(a, m, l) else None, abstract_params, master_sh, logical_sh)
  if not jax.tree.leaves(sh):
    return None, None
  abstract = jax.tree.map(lambda s, a: None if s is None else jax.ShapeDtypeStruct(a.shape, dtype), sh,
                          abstract_params, is_leaf=_is_none)
  return abstract, sh


@dataclasses.dataclass(frozen=True)
class StatePlacement:
  """Master params (sharded over data with the distributed optimizer or FSDP), the model's compute
  copy, and the optimizer state's placement (part of it in host memory with
  `optim.optimizer_cpu_offload`)."""
  master: Any            # NamedShardings of TrainState.params
  compute: Any           # NamedShardings of the compute copy (the params' logical axes)
  logical: Any           # logical PartitionSpecs of the params
  compute_dtype: str     # model.dtype
  main_grads_dtype: str  # fp32 | bf16: gradients accumulated over micro-batches
  fsdp: bool
  opt_state: Any = None  # NamedShardings of TrainState.opt_state

  def opt_state_on_device(self, opt_state, after):
    """The optimizer state with its host-offloaded leaves brought to device memory for the update,
    once `after` (the gradients) exists: tied to it by an optimization barrier, so that XLA cannot
    schedule the copies early and keep the state on the device through the forward and backward
    passes, which is what offloading it is to avoid."""
    if self.opt_state is None or all(sh.memory_kind != "pinned_host" for sh in jax.tree.leaves(self.opt_state)):
      return opt_state
    opt_state, _ = jax.lax.optimization_barrier((opt_state, after))
    return jax.tree.map(lambda x, sh: jax.device_put(x, sh.with_memory_kind("device"))
                        if sh.memory_kind == "pinned_host" else x, opt_state, self.opt_state)

  def opt_state_home(self, opt_state):
    """The updated optimizer state back in its own memory (host leaves to pinned host)."""
    if self.opt_state is None:
      return opt_state
    return jax.tree.map(lambda x, sh: jax.device_put(x, sh) if sh.memory_kind == "pinned_host" else x,
                        opt_state, self.opt_state)

  def compute_params(self, params):
    """The model's view of the masters. A leaf kept whole on each device (no data axes: no
    distributed optimizer, or expert weights at edp=1) is handed over as it is and cast by the
    model where it is used. A leaf sharded over data is cast to `model.dtype` on its shard and
    gathered to its compute placement, once per step (Megatron's bf16 params); with FSDP the
    decoder layers' leaves (scanned, or decoder/layer_k with `model.scan_layers=False`) stay
    sharded, boxed with their logical axes for the per-layer gather."""
    dtype = jnp.dtype(self.compute_dtype)

    def copy(path, p, master, sh, spec):
      if master == sh:
        return p
      p = p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p
      keys = [getattr(k, "key", "") for k in path[:2]]
      if self.fsdp and ("layers" in tuple(spec) or (keys[0] == "decoder" and keys[1].startswith("layer_"))):
        return nn.LogicallyPartitioned(p, tuple(spec))
      return jax.lax.with_sharding_constraint(p, sh)

    return jax.tree_util.tree_map_with_path(copy, params, self.master, self.compute, self.logical)

  def main_grads(self, grads):
    """Gradients of the compute copy on the masters' placement in `main_grads_dtype`: for leaves
    sharded over data the reduction over data becomes a reduce-scatter onto the shards."""
    boxed = lambda g: isinstance(g, nn.LogicallyPartitioned)  # noqa: E731  (FSDP: grads of boxed layers)
    grads = jax.tree.map(lambda g: g.value if boxed(g) else g, grads, is_leaf=boxed)  # no constraint
    dtype = STATE_DTYPES[self.main_grads_dtype]
    return jax.lax.with_sharding_constraint(jax.tree.map(lambda g: g.astype(dtype), grads), self.master)


def _init_boxed(model: GPTModel, seq_len: int, rng):
  """(boxed params, moe_state) of a fresh model."""
  # One row per device so the example batch divides over any data-parallel layout.
  mesh = current_mesh()
  tokens = jnp.zeros((mesh.size if mesh is not None else 1, seq_len), jnp.int32)
  variables = model.init({"params": rng, "router": rng}, tokens)
  return variables["params"], dict(variables.get(MOE_STATE, {}))


def _logical(model: GPTModel, seq_len: int, mesh, rules):
  """(abstract params, logical PartitionSpecs, NamedShardings by logical axes, abstract moe_state)."""
  boxed, abstract_moe = jax.eval_shape(lambda r: _init_boxed(model, seq_len, r), jax.random.key(0))
  is_box = lambda b: isinstance(b, nn.Partitioned)  # noqa: E731  (nn.unbox would constrain under a mesh)
  abstract = jax.tree.map(lambda b: b.value if is_box(b) else b, boxed, is_leaf=is_box)
  logical = nn.get_partition_spec(boxed)
  sh = fit_to_shapes(nn.logical_to_mesh_sharding(logical, mesh, rules), abstract)
  return abstract, logical, sh, abstract_moe


def param_shardings(model: GPTModel, seq_len: int, mesh, rules):
  """(abstract params, their NamedShardings by logical axes, abstract moe_state)."""
  abstract, _, sh, abstract_moe = _logical(model, seq_len, mesh, rules)
  return abstract, sh, abstract_moe


def _distributed(cfg, layout: MeshLayout | None) -> bool:
  if cfg is None or layout is None:
    return False
  if not (cfg.optim.use_distributed_optimizer or cfg.parallel.fsdp):
    return False
  return layout.sizes.dp > 1 or layout.sizes.edp > 1


def state_shardings(model: GPTModel, optimizer, seq_len: int, mesh, rules, layout: MeshLayout | None = None,
                    cfg=None):
  """Abstract TrainState and its NamedShardings: params by their logical axes (plus the data axes
  with the distributed optimizer or FSDP: give `layout` and `cfg`), the optimizer state by the
  rules of moejax.parallel.sharding (offloaded in part with `optim.optimizer_cpu_offload`), the
  rest replicated."""
  return _state_shardings(model, optimizer, _logical(model, seq_len, mesh, rules), mesh, layout, cfg)


def _state_shardings(model: GPTModel, optimizer, logical_parts, mesh, layout: MeshLayout | None, cfg):
  """`state_shardings` from `_logical`'s result."""
  abstract_params, logical, logical_sh, abstract_moe = logical_parts
  param_sh = logical_sh
  if _distributed(cfg, layout):
    param_sh = jax.tree.map(lambda sh, a, spec: shard_over_data(sh, a.shape, tuple(spec), layout),
                            logical_sh, abstract_params, logical)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  rep = replicated(mesh)
  host = cfg.optim.optimizer_cpu_offload if cfg is not None else 0.0
  abstract_copy, copy_sh = _kept_copy(abstract_params, param_sh, logical_sh, model.spec.dtype)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
                        moe_state=abstract_moe, compute_params=abstract_copy)
  shardings = TrainState(step=rep, params=param_sh,
                         opt_state=optimizer_state_shardings(optimizer, abstract_opt, param_sh, mesh, host),
                         moe_state=jax.tree.map(lambda _: rep, abstract_moe), compute_params=copy_sh)
  return abstract, shardings


def init_params(model: GPTModel, seq_len: int, seed: int, shardings):
  """Fresh params directly in their shardings."""
  init = lambda rng: nn.unbox(_init_boxed(model, seq_len, rng)[0])  # noqa: E731
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def _placement(model: GPTModel, logical_parts, shardings: TrainState, cfg) -> StatePlacement:
  """How the step gets the compute copy of `shardings.params` (placed by the logical axes of
  `_logical`'s result), gives gradients back and reaches an offloaded optimizer state."""
  _, logical, compute, _ = logical_parts
  return StatePlacement(master=shardings.params, compute=compute,
                        logical=logical, compute_dtype=model.spec.dtype,
                        main_grads_dtype=cfg.optim.main_grads_dtype,
                        fsdp=model.spec.sharding.fsdp,
                        opt_state=shardings.opt_state)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a train step is built from: the mesh layout and its sharding rules, the model, the
  optimizer, and the train state's abstract shapes, shardings and placement."""
  layout: MeshLayout
  rules: Any
  model: GPTModel
  optimizer: optax.GradientTransformation
  abstract: TrainState
  shardings: TrainState
  placement: StatePlacement


def setup(cfg, devices) -> Setup:
  """The `Setup` of config `cfg` on `devices` (the train loop's, the benchmarks', the tests')."""
  layout = make_mesh(cfg, devices)
  rules = logical_axis_rules(layout, cfg.parallel.sequence_parallel)
  model, optimizer = GPTModel(model_spec(cfg)), make_optimizer(cfg)
  with nn.logical_axis_rules(rules):
    parts = _logical(model, cfg.train.seq_length, layout.mesh, rules)  # one trace of the model's init for both
    abstract, shardings = _state_shardings(model, optimizer, parts, layout.mesh, layout, cfg)
    placement = _placement(model, parts, shardings, cfg)
  return Setup(layout, rules, model, optimizer, abstract, shardings, placement)


def init_state(model: GPTModel, optimizer: optax.GradientTransformation, seq_len: int, seed: int,
               shardings: TrainState, params=None) -> TrainState:
  """A step-0 state directly in its shardings: fresh params, or the given ones (weights of another
  run or a converted checkpoint), with a fresh optimizer state."""
  def init(rng, given):
    boxed, moe_state = _init_boxed(model, seq_len, rng)
    params = nn.unbox(boxed) if given is None else given  # XLA drops the unused random init
    copy = None if shardings.compute_params is None else compute_copy(shardings.compute_params, params,
                                                                       model.spec.dtype)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      moe_state=moe_state, compute_params=copy)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed), params)
