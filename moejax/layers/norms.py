"""RMSNorm, computed in fp32 whatever the activation dtype."""
import jax
import jax.numpy as jnp
from flax import linen as nn


class RMSNorm(nn.Module):
  """Normalises the last axis; `axis` is its logical name ("embed"; "head_dim" for QK-norm,
  None for MLA's latents)."""
  epsilon: float = 1e-5
  dtype: str = "float32"
  param_dtype: str = "float32"
  axis: str | None = "embed"

  @nn.compact
  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    scale_H = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis,)),
                         (x_BSH.shape[-1],), self.param_dtype)
    x = x_BSH.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.epsilon)
    return (x * scale_H.astype(jnp.float32)).astype(self.dtype)
