"""Load-balancing and z losses (Megatron-Core moe_utils), as pure functions.

`padding_mask` is True at padding tokens (Megatron's convention); those tokens
are left out of every statistic.
"""
import jax
import jax.numpy as jnp


def float_dtype(x):
  """fp64 for fp64 inputs (router_dtype='fp64'), else fp32: the dtype of router math."""
  return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _keep(padding_mask, n):
  if padding_mask is None:
    return jnp.ones((n,), jnp.float32)
  return (~padding_mask.reshape(-1)).astype(jnp.float32)


def compute_routing_scores_for_aux_loss(logits_TE, topk: int, score_function: str, padding_mask=None):
  """Top-k on the unbiased scores → (routing_map [T,E] bool, scores [T,E]) for the aux loss."""
  logits_TE = logits_TE.astype(float_dtype(logits_TE))
  if score_function == "softmax":
    scores_TE = jax.nn.softmax(logits_TE, axis=-1)
  elif score_function == "sigmoid":
    s = jax.nn.sigmoid(logits_TE)
    scores_TE = s / (s.sum(-1, keepdims=True) + 1e-20)
  else:
    raise ValueError(f"score_function={score_function!r} must be 'softmax' or 'sigmoid'")
  _, idx_TK = jax.lax.top_k(scores_TE, topk)
  routing_map_TE = jax.nn.one_hot(idx_TK, logits_TE.shape[-1], dtype=jnp.bool_).any(axis=1)
  keep_T = _keep(padding_mask, logits_TE.shape[0])
  routing_map_TE = routing_map_TE & (keep_T[:, None] > 0)
  return routing_map_TE, scores_TE * keep_T[:, None].astype(scores_TE.dtype)


def switch_load_balancing_loss(probs_TE, tokens_per_expert_E, total_num_tokens, topk: int,
                               num_experts: int, coeff: float, padding_mask=None):
  """coeff · E/(K·T²) · Σ_i (Σ_t p[t,i]) · c_i  (uniform routing gives exactly coeff)."""
  dt = float_dtype(probs_TE)
  keep_T = _keep(padding_mask, probs_TE.shape[0]).astype(dt)
  agg_E = jnp.sum(probs_TE.astype(dt) * keep_T[:, None], axis=0)
  scale = num_experts * coeff / (topk * jnp.asarray(total_num_tokens, dt) ** 2)
  return jnp.sum(agg_E * tokens_per_expert_E.astype(dt)) * scale


def z_loss(logits_TE, coeff: float, padding_mask=None):
  """coeff · mean_t logsumexp(logits[t])² over non-padding tokens."""
  dt = float_dtype(logits_TE)
  keep_T = _keep(padding_mask, logits_TE.shape[0]).astype(dt)
  lse_T = jax.nn.logsumexp(logits_TE.astype(dt), axis=-1)
  return coeff * jnp.sum(lse_T ** 2 * keep_T) / jnp.maximum(jnp.sum(keep_T), 1.0)


def _total_tokens(routing_map_TE, topk, with_padding_mask):
  """Megatron's `get_tokens_per_expert_and_token_count` token count."""
  if with_padding_mask:
    return routing_map_TE.sum().astype(jnp.float32) / topk
  return routing_map_TE.shape[0]


def aux_loss(scores_TE, routing_map_TE, topk: int, num_experts: int, coeff: float,
             with_padding_mask: bool = False, tokens_per_expert_E=None):
  """Megatron's `aux_loss` (and `global_aux_loss` given the running-average counts).

  Inputs come from `compute_routing_scores_for_aux_loss`; with a padding mask
  the token count is the number of non-padding tokens.
  """
  if tokens_per_expert_E is None:
    tokens_per_expert_E = routing_map_TE.sum(0)
  total = _total_tokens(routing_map_TE, topk, with_padding_mask)
  return switch_load_balancing_loss(scores_TE, tokens_per_expert_E, total, topk, num_experts, coeff)


def seq_aux_loss(scores_TE, routing_map_TE, num_sequences: int, topk: int, num_experts: int,
                 coeff: float, with_padding_mask: bool = False):
  """Megatron's `seq_aux_loss`: the aux loss of each sequence, averaged over the B sequences.

  Tokens are sequence-major ([B, S] flattened). As in Megatron, with a padding
  mask the per-sequence token count is (non-padding tokens) / B.
  """
  B = num_sequences
  T, E = scores_TE.shape
  scores_BE = scores_TE.reshape(B, T // B, E).sum(1)
  counts_BE = routing_map_TE.reshape(B, T // B, E).sum(1).astype(jnp.float32)
  if with_padding_mask:
    total = routing_map_TE.sum().astype(jnp.float32) / (topk * B)
  else:
    total = T // B
  dt = float_dtype(scores_TE)
  scale = num_experts * coeff / (topk * jnp.asarray(total, dt) ** 2)
  return jnp.sum(scores_BE.astype(dt) * counts_BE.astype(dt)) * scale / B
