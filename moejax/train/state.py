"""Train state (step, fp32 params, optimizer state, MoE state) and where each leaf lives."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE
from moejax.parallel.sharding import current_mesh, fit_to_shapes, optimizer_state_shardings, replicated


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  moe_state: Any = None  # the `moe_state` collection (expert bias, step counters); {} when unused


def _init_boxed(model: GPTModel, seq_len: int, rng):
  """(boxed params, moe_state) of a fresh model."""
  # One row per device so the example batch divides over any data-parallel layout.
  mesh = current_mesh()
  tokens = jnp.zeros((mesh.size if mesh is not None else 1, seq_len), jnp.int32)
  variables = model.init({"params": rng, "router": rng}, tokens)
  return variables["params"], dict(variables.get(MOE_STATE, {}))


def param_shardings(model: GPTModel, seq_len: int, mesh, rules):
  """(abstract params, their NamedShardings by logical axes, abstract moe_state)."""
  boxed, abstract_moe = jax.eval_shape(lambda r: _init_boxed(model, seq_len, r), jax.random.key(0))
  is_box = lambda b: isinstance(b, nn.Partitioned)  # noqa: E731  (nn.unbox would constrain under a mesh)
  abstract = jax.tree.map(lambda b: b.value if is_box(b) else b, boxed, is_leaf=is_box)
  sh = fit_to_shapes(nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, rules), abstract)
  return abstract, sh, abstract_moe


def state_shardings(model: GPTModel, optimizer, seq_len: int, mesh, rules):
  """Abstract TrainState and its NamedShardings: params by their logical axes, the optimizer
  state by the rules of moejax.parallel.sharding, the rest replicated."""
  abstract_params, param_sh, abstract_moe = param_shardings(model, seq_len, mesh, rules)
  abstract_opt = jax.eval_shape(optimizer.init, abstract_params)
  rep = replicated(mesh)
  abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=abstract_params, opt_state=abstract_opt,
                        moe_state=abstract_moe)
  shardings = TrainState(step=rep, params=param_sh,
                         opt_state=optimizer_state_shardings(optimizer, abstract_opt, param_sh, mesh),
                         moe_state=jax.tree.map(lambda _: rep, abstract_moe))
  return abstract, shardings


def init_params(model: GPTModel, seq_len: int, seed: int, shardings):
  """Fresh params directly in their shardings."""
  init = lambda rng: nn.unbox(_init_boxed(model, seq_len, rng)[0])  # noqa: E731
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def init_state(model: GPTModel, optimizer: optax.GradientTransformation, seq_len: int, seed: int,
               shardings: TrainState, params=None) -> TrainState:
  """A step-0 state directly in its shardings: fresh params, or the given ones (weights of another
  run or a converted checkpoint), with a fresh optimizer state."""
  def init(rng, given):
    boxed, moe_state = _init_boxed(model, seq_len, rng)
    params = nn.unbox(boxed) if given is None else given  # XLA drops the unused random init
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      moe_state=moe_state)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed), params)
