"""Load-balancing and z losses (Megatron-Core moe_utils), as pure functions.

`padding_mask` is True at padding tokens (Megatron's convention); those tokens
are left out of every statistic.
"""
import jax
import jax.numpy as jnp


def _keep(padding_mask, n):
  if padding_mask is None:
    return jnp.ones((n,), jnp.float32)
  return (~padding_mask.reshape(-1)).astype(jnp.float32)


def compute_routing_scores_for_aux_loss(logits_TE, topk: int, score_function: str, padding_mask=None):
  """Top-k on the unbiased scores → (routing_map [T,E] bool, scores [T,E]) for the aux loss."""
  logits_TE = logits_TE.astype(jnp.float32)
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
  return routing_map_TE, scores_TE * keep_T[:, None]


def switch_load_balancing_loss(probs_TE, tokens_per_expert_E, total_num_tokens, topk: int,
                               num_experts: int, coeff: float, padding_mask=None):
  """coeff · E/(K·T²) · Σ_i (Σ_t p[t,i]) · c_i  (uniform routing gives exactly coeff)."""
  keep_T = _keep(padding_mask, probs_TE.shape[0])
  agg_E = jnp.sum(probs_TE.astype(jnp.float32) * keep_T[:, None], axis=0)
  scale = num_experts * coeff / (topk * jnp.asarray(total_num_tokens, jnp.float32) ** 2)
  return jnp.sum(agg_E * tokens_per_expert_E.astype(jnp.float32)) * scale


def z_loss(logits_TE, coeff: float, padding_mask=None):
  """coeff · mean_t logsumexp(logits[t])² over non-padding tokens."""
  keep_T = _keep(padding_mask, logits_TE.shape[0])
  lse_T = jax.nn.logsumexp(logits_TE.astype(jnp.float32), axis=-1)
  return coeff * jnp.sum(lse_T ** 2 * keep_T) / jnp.maximum(jnp.sum(keep_T), 1.0)
