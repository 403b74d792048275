"""Where every tensor lives: logical axis names → mesh axes, and optimizer state → its params.

Parameters and activations carry logical axis names; one rules table maps them to mesh axes:

| logical axis   | mesh role (see mesh.py)          | used by                              |
|----------------|----------------------------------|--------------------------------------|
| batch          | dp                               | activations, data                    |
| seq            | cp (+ tp with sequence_parallel) | residual stream between blocks       |
| attn_seq       | cp                               | inside attention and dense MLP       |
| heads/kv_heads | tp                               | attention projections                |
| mlp, vocab     | tp                               | dense MLP, embedding and output head |
| expert         | ep                               | expert weights                       |
| expert_mlp     | etp                              | expert FFN dimension                 |
| layers         | pp (where it divides the stack)  | scanned layer stacks (pipeline ranks hold their layers) |
| embed, head_dim, expert_embed | replicated        | —                                    |

Parameters and optimizer state follow a second table, by what a leaf of the train state is:

| leaf                                          | placement                                                   |
|-----------------------------------------------|-------------------------------------------------------------|
| compute copy of a parameter (inside the step) | its logical axes above                                      |
| fp32 master parameter (TrainState.params)     | the compute placement; with the distributed optimizer or    |
|                                               | FSDP plus dp (edp for expert weights) on a free dimension    |
|                                               | (`shard_over_data`)                                         |
| per-parameter optimizer leaves (Adam mu, nu)  | its master parameter's placement; the first                 |
|                                               | `optim.optimizer_cpu_offload` of the bytes in pinned host    |
| everything else (step counts, schedule state) | replicated                                                  |
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.parallel.mesh import MeshLayout


def _axes(names: tuple[str, ...]):
  return names if names else None


def logical_axis_rules(layout: MeshLayout, sequence_parallel: bool = False) -> tuple:
  """The rules table for `nn.logical_axis_rules` on this layout."""
  tp, cp, dp = layout.role_axes("tp"), layout.role_axes("cp"), layout.role_axes("dp")
  return (
      ("batch", _axes(dp)),
      ("seq", _axes(cp + tp if sequence_parallel else cp)),
      ("attn_seq", _axes(cp)),
      ("heads", _axes(tp)),
      ("kv_heads", _axes(tp)),
      ("mlp", _axes(tp)),
      ("vocab", _axes(tp)),
      ("expert", _axes(layout.role_axes("ep"))),
      ("expert_mlp", _axes(layout.role_axes("etp"))),
      ("embed", None),
      ("head_dim", None),
      ("expert_embed", None),
      ("layers", _axes(layout.role_axes("pp") if layout.sizes.pp > 1 else ())),
  )


def fit_to_shapes(shardings, abstract):
  """The shardings with mesh axes dropped from the dimensions they do not divide (e.g. the
  `layers` axis of a one-layer scan segment under pp=2): such dimensions replicate."""
  def fit(sh, x):
    if not isinstance(sh, NamedSharding):
      return sh
    spec = []
    for dim, axes in zip(x.shape, tuple(sh.spec) + (None,) * (len(x.shape) - len(sh.spec))):
      names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      spec.append(axes if dim % math.prod(sh.mesh.shape[a] for a in names) == 0 else None)
    return NamedSharding(sh.mesh, P(*spec))
  return jax.tree.map(fit, shardings, abstract, is_leaf=lambda x: isinstance(x, NamedSharding))


def data_axes(layout: MeshLayout, logical_axes) -> tuple[str, ...]:
  """The mesh axes over which a parameter is replicated for data parallelism: edp for expert
  weights (those with an `expert` axis), dp for the rest."""
  return layout.role_axes("edp" if "expert" in tuple(logical_axes or ()) else "dp")


def shard_over_data(sharding: NamedSharding, shape: tuple[int, ...], logical_axes, layout: MeshLayout
                    ) -> NamedSharding:
  """`sharding` plus the data-parallel axes on the dimension with most room for them: the largest
  local size they divide, never the scanned `layers` dimension (each layer's slice stays a shard
  of its own). A leaf with no such dimension (a tiny norm scale) keeps its sharding."""
  names = tuple(logical_axes or ()) + (None,) * (len(shape) - len(tuple(logical_axes or ())))
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  used = {a for entry in spec if entry is not None for a in ((entry,) if isinstance(entry, str) else entry)}
  extra = tuple(a for a in data_axes(layout, names) if a not in used)
  n = math.prod(sharding.mesh.shape[a] for a in extra)
  if n == 1:
    return sharding

  def local(d):
    entry = spec[d]
    held = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return shape[d] // math.prod(sharding.mesh.shape[a] for a in held), held

  free = [d for d in range(len(shape)) if names[d] != "layers" and local(d)[0] % n == 0]
  if not free:
    return sharding
  d = max(free, key=lambda i: local(i)[0])
  spec = spec[:d] + (local(d)[1] + extra,) + spec[d + 1:]
  return NamedSharding(sharding.mesh, P(*spec), memory_kind=sharding.memory_kind)


def optimizer_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state, param_shardings,
                              mesh, host_fraction: float = 0.0) -> object:
  """Shardings of the optimizer state by the table above (optax finds the per-parameter leaves):
  `param_shardings` are those of the master params; the first `host_fraction` of the
  per-parameter bytes (in tree order) go to pinned host memory."""
  replicated_sh = replicated(mesh)
  # a state masked per optimizer (Muon beside AdamW: optax.multi_transform) holds MaskedNodes for the
  # params its optimizer does not own
  masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
  place_leaf = lambda leaf, sh: leaf if masked(leaf) else _Placed(sh, shard_bytes(leaf, sh))  # noqa: E731
  placed = optax.tree_map_params(optimizer, place_leaf, abstract_opt_state, param_shardings,
                                 transform_non_params=lambda _: replicated_sh,
                                 is_leaf=lambda x: isinstance(x, NamedSharding) or masked(x))
  is_placed = lambda x: isinstance(x, _Placed)  # noqa: E731
  total = sum(p.nbytes for p in jax.tree.leaves(placed, is_leaf=is_placed) if is_placed(p))
  budget, seen = host_fraction * total, [0]

  def place(p):
    if not is_placed(p):
      return p
    seen[0] += p.nbytes
    host = host_fraction > 0 and seen[0] - p.nbytes < budget
    return p.sharding.with_memory_kind("pinned_host") if host else p.sharding

  return jax.tree.map(place, placed, is_leaf=is_placed)


class _Placed(NamedTuple):
  sharding: NamedSharding
  nbytes: int


def shard_bytes(leaf, sharding: NamedSharding) -> int:
  """Bytes of one device's shard of an (abstract) array."""
  return math.prod(sharding.shard_shape(leaf.shape)) * jax.numpy.dtype(leaf.dtype).itemsize


def batch_sharding(mesh, rules, ndim: int, leading_microbatch: bool = True) -> NamedSharding:
  """Sharding of a [num_micro, batch, seq...] token array: batch over dp."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  lead = (None,) if leading_microbatch else ()
  rest = (None,) * (ndim - len(lead) - 1)
  return NamedSharding(mesh, P(*lead, *spec, *rest))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def host_replicated(mesh) -> NamedSharding:
  """Replicated, in pinned host memory on GPUs: for the step's metrics, which the loop fetches
  every step. The step writes them to host memory itself, so the fetch waits for the step alone,
  not behind a checkpoint's device-to-host copies (PJRT's transfers to the host share one queue).
  Device memory elsewhere."""
  if jax.default_backend() == "gpu" and all(has_pinned_host(d) for d in mesh.devices.flat):
    return NamedSharding(mesh, P(), memory_kind="pinned_host")
  return replicated(mesh)


def has_pinned_host(device) -> bool:
  """Whether `device` has a pinned host memory space (GPUs and the CPU do)."""
  return any(m.kind == "pinned_host" for m in device.addressable_memories())


def current_mesh():
  """The mesh set by `jax.set_mesh`, or None outside one and inside a shard_map manual over every axis
  (pipeline stages when pp is the whole mesh): single-device code there."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty or set(mesh.manual_axes) >= set(mesh.axis_names) else mesh


def mesh_axes_of(logical: str) -> tuple[str, ...]:
  """The mesh axes a logical axis maps to under the active rules; () off-mesh."""
  if current_mesh() is None:
    return ()
  (spec,) = nn.logical_to_mesh_axes((logical,))
  return () if spec is None else tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)


def logical_axis_size(logical: str) -> int:
  """How many ways the current mesh splits a logical axis (1 off-mesh)."""
  mesh = current_mesh()
  return math.prod(mesh.shape[a] for a in mesh_axes_of(logical)) if mesh is not None else 1


def dividing_axes(logical: str, dim: int) -> tuple[str, ...]:
  """The mesh axes of a logical axis when they split `dim` evenly, else () (that dim replicates,
  e.g. `model.init` on one sequence): the axes a shard_map over `dim` can use."""
  return mesh_axes_of(logical) if dim % logical_axis_size(logical) == 0 else ()
