"""GPTModel: embedding → decoder stack → output head (untied, or the embedding's transpose),
plus the Multi-Token Prediction depths when `model.mtp_num_layers` > 0."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.embedding import Embedding, OutputHead
from moejax.models.decoder import Decoder
from moejax.models.mtp import MultiTokenPredictionLayer, roll_left
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


def _append_layer(stats, st):
  """MoE statistics [L, ...] with one more layer's appended."""
  if st is None:
    return stats
  st = jax.tree.map(lambda a: a[None], st)
  return st if stats is None else jax.tree.map(lambda a, b: jnp.concatenate([a, b]), stats, st)


class GPTModel(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BS: jax.Array, positions_BS: jax.Array | None = None,
               labels_BS: jax.Array | None = None, loss_weights_BS: jax.Array | None = None, mtp: bool = False):
    """Returns fp32 logits [B, S, V_padded] and the MoE statistics per MoE layer (or None); given
    `labels_BS` (and per-token `loss_weights_BS`), Σ weights·cross-entropy instead of the logits.

    With `mtp` (and `model.mtp_num_layers` > 0) a third output: the MTP logits [D, B, S, V_padded]
    (depth k predicting the token k+1 ahead) or, given labels, the MTP losses [D] (depth k's
    cross-entropy with labels and weights rolled k places left, the weights renormalized to sum
    to one unless train.calculate_per_token_loss); the MTP layers' MoE statistics are appended to the decoder's."""
    s = self.spec
    cp = cp_size()
    inp = model_inputs(s, tokens_BS, positions_BS, labels_BS, loss_weights_BS)
    embedding = Embedding(s, name="embedding")
    untied = OutputHead(s, name="output_layer") if s.untie_embeddings_and_output_weights else None
    head = untied or embedding  # .loss on both; logits: OutputHead() or the tied Embedding.attend
    logits = untied if untied is not None else embedding.attend
    h_BSH, moe_stats = Decoder(s, name="decoder")(embedding(inp.tokens_BS), inp.positions_BS, inp.segments_BS)
    main = (from_load_balanced(logits(h_BSH), cp) if labels_BS is None
            else head.loss(h_BSH, inp.labels_BS, inp.loss_weights_BS))
    if not s.mtp_num_layers or not (mtp or self.is_initializing()):
      return main, moe_stats
    depths, tokens_k, labels_k, weights_k = [], tokens_BS, labels_BS, loss_weights_BS
    for k in range(s.mtp_num_layers):
      tokens_k = roll_left(tokens_k)  # rolled in sequence order, then into cp's order
      h_BSH, st = MultiTokenPredictionLayer(s, s.moe_pattern[-1], name=f"mtp_{k}")(
          h_BSH, embedding(to_load_balanced(tokens_k, cp)), inp.positions_BS, inp.segments_BS)
      moe_stats = _append_layer(moe_stats, st)
      if labels_BS is None:
        depths.append(from_load_balanced(logits(h_BSH), cp))
        continue
      labels_k, weights_k = roll_left(labels_k), roll_left(weights_k)
      total = jnp.sum(weights_k)  # the mean over this depth's tokens; per-token loss: over the LM loss's count
      w_BS = weights_k if s.loss.calculate_per_token_loss else jnp.where(
          total > 0, weights_k / jnp.where(total > 0, total, 1.0), 0.0)
      depths.append(head.loss(h_BSH, to_load_balanced(labels_k, cp), to_load_balanced(w_BS, cp)))
    return main, moe_stats, jnp.stack(depths)
