"""Shard_map typing of Pallas kernel outputs (shared by the kernels' wrappers)."""
from __future__ import annotations

import jax


def varying_axes(x) -> frozenset:
  """The shard_map axes x varies over (`aval.mat.varying`; `aval.vma` before JAX 0.11)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)
  return frozenset(mat.varying if mat is not None else getattr(aval, "vma", ()))


def vary_like(y, *likes):
  """Types y as varying over the shard_map axes its inputs vary over (inside shard_map,
  pallas_call outputs come back typed invariant, which custom_vjp rejects). A type
  cast only (jax.lax.pcast), so no pass over y; a no-op outside shard_map."""
  axes = frozenset().union(*map(varying_axes, likes)) - varying_axes(y)
  return jax.lax.pcast(y, tuple(sorted(axes)), to="varying") if axes else y


def sum_onto(y, like):
  """y summed over the shard_map axes it varies over and `like` does not: the cotangent of an
  input `like` that the forward used with values varying over those axes (the transpose of the
  implicit broadcast is a sum; custom_vjp rules must return it typed as `like`)."""
  axes = varying_axes(y) - varying_axes(like)
  return jax.lax.psum(y, tuple(sorted(axes))) if axes else y


def out_struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
  """A pallas_call output typed as varying over the shard_map axes `like` varies over (inside a
  shard_map with check_vma, pallas_call needs that on each output; outside, it is empty)."""
  return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=jax.typeof(like).manual_axis_type)
