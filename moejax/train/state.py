"""Train state (step, fp32 params, optimizer state) and where each leaf lives."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from moejax.models.gpt import GPTModel
from moejax.parallel.sharding import current_mesh


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  moe_state: Any = None  # non-trainable MoE state (expert bias, step counters); {} when unused


def _init_boxed(model: GPTModel, optimizer, seq_len: int, rng, with_moe_state: bool = False):
  # One row per device so the example batch divides over any data-parallel layout.
  mesh = current_mesh()
  tokens = jnp.zeros((mesh.size if mesh is not None else 1, seq_len), jnp.int32)
  variables = model.init({"params": rng, "router": rng}, tokens)
  params = variables["params"]
  if with_moe_state:
    return params, optimizer.init(nn.unbox(params)), dict(variables.get("moe_state", {}))
  return params, optimizer.init(nn.unbox(params))


def state_shardings(model: GPTModel, optimizer, seq_len: int, mesh, rules):
  """Abstract TrainState and its NamedShardings, from the params' logical axes.

  Optimizer moments take their param's sharding; scalars are replicated.
  """
  boxed, _, abstract_moe = jax.eval_shape(lambda r: _init_boxed(model, optimizer, seq_len, r, True),
                                          jax.random.key(0))
  param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules)
  abstract_params = nn.unbox(boxed)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  replicated = NamedSharding(mesh, P())

  def opt_leaf(path, leaf):
    # optax moments mirror the params tree: match on the param path suffix.
    key = tuple(getattr(k, "key", getattr(k, "name", k)) for k in path)
    node = param_sh
    for k in _param_path_suffix(key, param_sh):
      node = node[k]
    return node if isinstance(node, NamedSharding) and leaf.ndim else replicated

  opt_sh = jax.tree_util.tree_map_with_path(opt_leaf, abstract_opt)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
                        moe_state=abstract_moe)
  shardings = TrainState(step=replicated, params=param_sh, opt_state=opt_sh,
                         moe_state=jax.tree.map(lambda _: replicated, abstract_moe))
  return abstract, shardings


def _param_path_suffix(key, param_tree):
  """The trailing part of an optimizer-state path that names a param, or ()."""
  for start in range(len(key)):
    node, ok = param_tree, True
    for k in key[start:]:
      if isinstance(node, dict) and k in node:
        node = node[k]
      else:
        ok = False
        break
    if ok and not isinstance(node, dict):
      return key[start:]
  return ()


def init_state(model: GPTModel, optimizer: optax.GradientTransformation, seq_len: int, seed: int,
               shardings: TrainState) -> TrainState:
  """Initializes params and optimizer state directly into their shardings."""
  def init(rng):
    params, opt_state, moe_state = _init_boxed(model, optimizer, seq_len, rng, True)
    return TrainState(step=jnp.zeros((), jnp.int32), params=nn.unbox(params), opt_state=opt_state,
                      moe_state=moe_state)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
