"""Rotary position embeddings (rotate-half layout, as Megatron and HF Llama/Mixtral), plain or
YaRN-scaled (DeepSeek-V2/V3), with YaRN's attention-scale corrections.

Checkpoints that store the rotary dims of a head as interleaved pairs (DeepSeek) are permuted
to this layout by the converter (moejax/convert), so there is one layout here.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from moejax.config import RotaryScalingSpec


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
  """YaRN's magnitude correction 0.1·mscale·ln(scale) + 1 (1 when not extending)."""
  return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(dim: int, base: float, r: RotaryScalingSpec) -> np.ndarray:
  """Per-pair frequencies blended from extrapolation (fast dims) to interpolation by `factor`
  (slow dims) over the correction range [beta_fast, beta_slow] rotations (YaRN, arXiv 2309.00071)."""
  pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
  extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (r.rotary_scaling_factor * pos_freqs)

  def correction_dim(rotations):
    return dim * math.log(r.original_max_position_embeddings / (rotations * 2 * math.pi)) / (2 * math.log(base))

  low = max(math.floor(correction_dim(r.beta_fast)), 0)
  high = min(math.ceil(correction_dim(r.beta_slow)), dim - 1)
  if low == high:
    high += 0.001  # no singularity
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
  extrapolation_weight = 1 - ramp
  return (interpolation * (1 - extrapolation_weight) + extrapolation * extrapolation_weight).astype(np.float32)


def rotary_frequencies(dim: int, base: float, scaling: RotaryScalingSpec | None = None) -> tuple[np.ndarray, float]:
  """(inverse frequency per rotary pair [dim/2] fp32, factor on cos/sin)."""
  if scaling is None or scaling.rope_type == "rope":
    return (1.0 / base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))).astype(np.float32), 1.0
  factor = scaling.rotary_attention_factor
  if factor is None:
    f = scaling.rotary_scaling_factor
    factor = yarn_mscale(f, scaling.mscale) / yarn_mscale(f, scaling.mscale_all_dim)
  return _yarn_inv_freq(dim, base, scaling), float(factor)


def softmax_scale_factor(scaling: RotaryScalingSpec) -> float:
  """YaRN's correction of MLA's softmax scale: mscale(factor, mscale_all_dim)^2 (1 without YaRN)."""
  if scaling.rope_type != "yarn" or not scaling.mscale_all_dim:
    return 1.0
  return yarn_mscale(scaling.rotary_scaling_factor, scaling.mscale_all_dim) ** 2


def apply_rotary(x_BSND: jax.Array, positions_BS: jax.Array, base: float,
                 scaling: RotaryScalingSpec | None = None, rotary_dim: int | None = None) -> jax.Array:
  """Rotates the two halves of the head dimension by position-dependent angles; with `rotary_dim`
  only the first rotary_dim channels (frequencies over rotary_dim, as Megatron's --rotary-percent
  and HF's partial_rotary_factor), the rest passed through."""
  if rotary_dim is not None and rotary_dim < x_BSND.shape[-1]:
    rot, rest = x_BSND[..., :rotary_dim], x_BSND[..., rotary_dim:]
    return jnp.concatenate([apply_rotary(rot, positions_BS, base, scaling), rest], axis=-1)
  D = x_BSND.shape[-1]
  inv_freq_d, factor = rotary_frequencies(D, base, scaling)
  angles_BSd = positions_BS.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_d)
  cos = (jnp.cos(angles_BSd) * factor)[:, :, None, :]
  sin = (jnp.sin(angles_BSd) * factor)[:, :, None, :]
  x = x_BSND.astype(jnp.float32)
  x1, x2 = x[..., : D // 2], x[..., D // 2:]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BSND.dtype)
