"""Rotary position embeddings (rotate-half layout, as Megatron and HF Llama/Mixtral)."""
import jax
import jax.numpy as jnp


def apply_rotary(x_BSND: jax.Array, positions_BS: jax.Array, base: float) -> jax.Array:
  """Rotates the two halves of the head dimension by position-dependent angles."""
  D = x_BSND.shape[-1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D))
  angles_BSd = positions_BS.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles_BSd)[:, :, None, :]
  sin = jnp.sin(angles_BSd)[:, :, None, :]
  x = x_BSND.astype(jnp.float32)
  x1, x2 = x[..., : D // 2], x[..., D // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BSND.dtype)
