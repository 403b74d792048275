"""Multi-Token Prediction (DeepSeek-V3; Megatron's MultiTokenPredictionLayer).

Depth k (1..D) predicts the token k+1 places ahead. Its input at position i combines the
previous depth's hidden state h_i (the decoder's final-normed output for k=1, as in Megatron)
with the embedding of token t_{i+k}:

  h'_i = TransformerBlock(W_eh [RMSNorm(Emb(t_{i+k})); RMSNorm(h_i)]),  output RMSNorm(h'_i)

The block is the decoder's last layer kind (MoE for DeepSeek-V3); embedding and output head are
the model's own. `roll_left` shifts a [B, S] array k places left, zero-filled, as Megatron's
`roll_tensor` (the positions it fills are left out of the MTP loss).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.norms import RMSNorm
from moejax.models.decoder import DecoderBlock


def roll_left(x_BS: jax.Array, shift: int = 1) -> jax.Array:
  """x shifted `shift` places left along the sequence, the vacated end filled with zeros."""
  return jnp.pad(x_BS[:, shift:], ((0, 0), (0, shift)))


class MultiTokenPredictionLayer(nn.Module):
  spec: ModelSpec
  is_moe: bool

  @nn.compact
  def __call__(self, h_BSH, e_BSH, positions_BS, segments_BS=None):
    """(the depth's normed hidden state, its MoE statistics or None) from the previous depth's
    hidden state `h_BSH` and the embedding `e_BSH` of the tokens this depth reads."""
    s = self.spec
    norm = lambda name: RMSNorm(s.norm_epsilon, s.dtype, s.params_dtype, name=name)  # noqa: E731
    w_2HH = self.param("eh_proj", nn.with_logical_partitioning(nn.initializers.normal(s.init_method_std),
                                                               (None, "embed")),
                       (2 * s.hidden_size, s.hidden_size), s.params_dtype).astype(s.dtype)
    x_BS2H = jnp.concatenate([norm("enorm")(e_BSH), norm("hnorm")(h_BSH)], axis=-1)
    x_BSH = nn.with_logical_constraint(jnp.einsum("bsc,ch->bsh", x_BS2H, w_2HH), ("batch", "seq", "embed"))
    x_BSH, stats = DecoderBlock(s, self.is_moe, name="block")(x_BSH, positions_BS, segments_BS)
    return norm("final_norm")(x_BSH), stats
