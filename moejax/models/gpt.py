"""GPTModel: embedding → decoder stack → untied output head."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.embedding import Embedding, OutputHead
from moejax.models.decoder import Decoder
from moejax.parallel.context import cp_size, from_load_balanced, to_load_balanced


def document_positions_and_segments(tokens_BS: jax.Array, eod: int):
  """Per row: position ids restarting after each `eod` token, and the document number
  of every token (Megatron's reset_position_ids / reset_attention_mask)."""
  B, S = tokens_BS.shape
  after_eod_BS = jnp.pad(tokens_BS[:, :-1] == eod, ((0, 0), (1, 0)))
  segments_BS = jnp.cumsum(after_eod_BS, axis=1, dtype=jnp.int32)
  idx_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  starts_BS = jax.lax.cummax(jnp.where(after_eod_BS, idx_BS, 0), axis=1)
  return idx_BS - starts_BS, segments_BS


class ModelInputs(NamedTuple):
  tokens_BS: jax.Array
  positions_BS: jax.Array
  segments_BS: jax.Array | None
  labels_BS: jax.Array | None
  loss_weights_BS: jax.Array | None


def model_inputs(spec: ModelSpec, tokens_BS, positions_BS=None, labels_BS=None, loss_weights_BS=None,
                 ) -> ModelInputs:
  """Positions and document ids of the tokens, then everything per token in the model's sequence
  order: the cp load-balanced order under context parallelism (moejax/parallel/context.py)."""
  segments_BS = None
  docs = spec.documents
  if docs.reset_position_ids or docs.reset_attention_mask:
    doc_positions_BS, doc_segments_BS = document_positions_and_segments(tokens_BS, docs.eod)
    if docs.reset_position_ids and positions_BS is None:
      positions_BS = doc_positions_BS
    if docs.reset_attention_mask:
      segments_BS = doc_segments_BS
  if positions_BS is None:
    positions_BS = jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)
  cp = cp_size()
  return ModelInputs(*(None if x is None else to_load_balanced(x, cp)
                       for x in (tokens_BS, positions_BS, segments_BS, labels_BS, loss_weights_BS)))


class GPTModel(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BS: jax.Array, positions_BS: jax.Array | None = None,
               labels_BS: jax.Array | None = None, loss_weights_BS: jax.Array | None = None):
    """Returns fp32 logits [B, S, V_padded] and the MoE statistics per MoE layer (or None); given
    `labels_BS` (and per-token `loss_weights_BS`), Σ weights·cross-entropy instead of the logits."""
    s = self.spec
    inp = model_inputs(s, tokens_BS, positions_BS, labels_BS, loss_weights_BS)
    x_BSH = Embedding(s, name="embedding")(inp.tokens_BS)
    x_BSH, moe_stats = Decoder(s, name="decoder")(x_BSH, inp.positions_BS, inp.segments_BS)
    head = OutputHead(s, name="output_layer")
    if labels_BS is None:
      return from_load_balanced(head(x_BSH), cp_size()), moe_stats
    return head.loss(x_BSH, inp.labels_BS, inp.loss_weights_BS), moe_stats
