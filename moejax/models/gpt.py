"""GPTModel: embedding → decoder stack → output head (untied, or the embedding's transpose),
plus the Multi-Token Prediction depths when `model.mtp_num_layers` > 0."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.embedding import Embedding, OutputHead
from moejax.models.decoder import Decoder
from moejax.models.mtp import MultiTokenPredictionLayer, roll_left


def document_positions_and_segments(tokens_BS: jax.Array, eod: int):
  """Per row: position ids restarting after each `eod` token, and the document number
  of every token (Megatron's reset_position_ids / reset_attention_mask)."""
  B, S = tokens_BS.shape
  after_eod_BS = jnp.pad(tokens_BS[:, :-1] == eod, ((0, 0), (1, 0)))
  segments_BS = jnp.cumsum(after_eod_BS, axis=1, dtype=jnp.int32)
  idx_BS = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))
  starts_BS = jax.lax.cummax(jnp.where(after_eod_BS, idx_BS, 0), axis=1)
  return idx_BS - starts_BS, segments_BS


def _append_layer(stats, st):
  """MoE statistics [L, ...] with one more layer's appended."""
  if st is None:
    return stats
  st = jax.tree.map(lambda a: a[None], st)
  return st if stats is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), stats, st)


class GPTModel(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BS: jax.Array, positions_BS: jax.Array | None = None, mtp: bool = False):
    """Returns fp32 logits [B, S, V] and the MoE statistics per MoE layer (or None); with `mtp`
    (and `model.mtp_num_layers` > 0) also the MTP logits [D, B, S, V], depth k predicting the
    token k+1 ahead, and the MTP layers' MoE statistics appended to the decoder's."""
    s = self.spec
    segments_BS = None
    docs = s.documents
    if docs.reset_position_ids or docs.reset_attention_mask:
      doc_positions_BS, doc_segments_BS = document_positions_and_segments(tokens_BS, docs.eod)
      if docs.reset_position_ids and positions_BS is None:
        positions_BS = doc_positions_BS
      if docs.reset_attention_mask:
        segments_BS = doc_segments_BS
    if positions_BS is None:
      positions_BS = jnp.broadcast_to(jnp.arange(tokens_BS.shape[1]), tokens_BS.shape)
    embedding = Embedding(s, name="embedding")
    head = OutputHead(s, name="output_layer") if s.untie_embeddings_and_output_weights else embedding.attend
    h_BSH, moe_stats = Decoder(s, name="decoder")(embedding(tokens_BS), positions_BS, segments_BS)
    logits_BSV = head(h_BSH)
    if not s.mtp_num_layers or not (mtp or self.is_initializing()):
      return logits_BSV, moe_stats
    mtp_logits, tokens_k_BS = [], tokens_BS
    for k in range(s.mtp_num_layers):
      tokens_k_BS = roll_left(tokens_k_BS)
      h_BSH, st = MultiTokenPredictionLayer(s, s.moe_pattern[-1], name=f"mtp_{k}")(
          h_BSH, embedding(tokens_k_BS), positions_BS, segments_BS)
      moe_stats = _append_layer(moe_stats, st)
      mtp_logits.append(head(h_BSH))
    return logits_BSV, moe_stats, jnp.stack(mtp_logits)
