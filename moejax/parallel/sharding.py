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

Optimizer state follows a second table, by what a leaf of the state is:

| optimizer state                                 | placement               |
|-------------------------------------------------|-------------------------|
| per-parameter leaves (Adam moments mu, nu)      | the parameter's sharding |
| everything else (step counts, schedule state)   | replicated              |
"""
from __future__ import annotations

import math

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


def optimizer_state_shardings(optimizer: optax.GradientTransformation, abstract_opt_state, param_shardings,
                              mesh) -> object:
  """Shardings of the optimizer state by the table above (optax finds the per-parameter leaves)."""
  replicated_sh = replicated(mesh)
  return optax.tree_map_params(optimizer, lambda _, sh: sh, abstract_opt_state, param_shardings,
                               transform_non_params=lambda _: replicated_sh,
                               is_leaf=lambda x: isinstance(x, NamedSharding))


def batch_sharding(mesh, rules, ndim: int, leading_microbatch: bool = True) -> NamedSharding:
  """Sharding of a [num_micro, batch, seq...] token array: batch over dp."""
  spec = nn.logical_to_mesh_axes(("batch",), rules)
  lead = (None,) if leading_microbatch else ()
  rest = (None,) * (ndim - len(lead) - 1)
  return NamedSharding(mesh, P(*lead, *spec, *rest))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def current_mesh():
  """The mesh set by `jax.set_mesh`, or None outside one (single-device code)."""
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh is None or mesh.empty else mesh
