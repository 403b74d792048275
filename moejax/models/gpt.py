"""GPTModel: embedding → decoder stack → untied output head."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.embedding import Embedding, OutputHead
from moejax.models.decoder import Decoder


class GPTModel(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BS: jax.Array, positions_BS: jax.Array | None = None):
    """Returns fp32 logits [B, S, V] and the MoE statistics per MoE layer (or None)."""
    if positions_BS is None:
      positions_BS = jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)
    x_BSH = Embedding(self.spec, name="embedding")(tokens_BS)
    x_BSH, moe_stats = Decoder(self.spec, name="decoder")(x_BSH, positions_BS)
    return OutputHead(self.spec, name="output_layer")(x_BSH), moe_stats
