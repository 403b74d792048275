"""The single call site for grouped GEMM: `grouped_gemm(x, w, group_sizes)`.

Rows of `x` are sorted by group; rows of group g are multiplied by `w[g]`.
Rows past `sum(group_sizes)` produce zeros. Backends are swapped here only.
"""
import jax
import jax.numpy as jnp


def grouped_gemm(x_MK: jax.Array, w_GKN: jax.Array, group_sizes_G: jax.Array,
                 *, preferred_element_type=None) -> jax.Array:
  """y[M, N] = x[M, K] @ w[g] for the rows of group g (dropless MoE experts)."""
  return jax.lax.ragged_dot(
      x_MK, w_GKN, group_sizes_G.astype(jnp.int32),
      preferred_element_type=preferred_element_type)
