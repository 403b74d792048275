"""TopKRouter and the routing functions of Megatron-Core's moe_utils/router.

All router math runs in fp32. The module works in the global (GSPMD) view, so
token counts and losses are over the whole micro-batch whatever the layout.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.moe import losses


def _group_limited_topk(scores_TE, topk, num_groups, group_topk):
  T, E = scores_TE.shape
  grouped = scores_TE.reshape(T, num_groups, E // num_groups)
  group_scores_TG = jax.lax.top_k(grouped, topk // group_topk)[0].sum(-1)
  _, gidx = jax.lax.top_k(group_scores_TG, group_topk)
  group_mask_TG = jax.nn.one_hot(gidx, num_groups, dtype=jnp.bool_).any(axis=1)
  mask_TE = jnp.repeat(group_mask_TG, E // num_groups, axis=1)
  return jax.lax.top_k(jnp.where(mask_TE, scores_TE, -jnp.inf), topk)


def _topk(scores_TE, topk, num_groups, group_topk):
  if group_topk:
    return _group_limited_topk(scores_TE, topk, num_groups, group_topk)
  return jax.lax.top_k(scores_TE, topk)


def topk_routing_sparse(logits_TE, topk, *, use_pre_softmax=False, num_groups=None, group_topk=None,
                        scaling_factor=None, score_function="softmax", expert_bias=None):
  """Like `topk_routing` but returns (probs [T,K], expert indices [T,K])."""
  logits_TE = logits_TE.astype(jnp.float32)
  if score_function == "softmax":
    if use_pre_softmax:
      probs_TK, idx_TK = _topk(jax.nn.softmax(logits_TE, -1), topk, num_groups, group_topk)
    else:
      top_TK, idx_TK = _topk(logits_TE, topk, num_groups, group_topk)
      probs_TK = jax.nn.softmax(top_TK, -1)
  elif score_function == "sigmoid":
    scores_TE = jax.nn.sigmoid(logits_TE)
    if expert_bias is not None:
      _, idx_TK = _topk(scores_TE + expert_bias, topk, num_groups, group_topk)
      probs_TK = jnp.take_along_axis(scores_TE, idx_TK, axis=1)
    else:
      probs_TK, idx_TK = _topk(scores_TE, topk, num_groups, group_topk)
    if topk > 1:
      probs_TK = probs_TK / (probs_TK.sum(-1, keepdims=True) + 1e-20)
  else:
    raise ValueError(f"score_function={score_function!r} must be 'softmax' or 'sigmoid'")
  if scaling_factor:
    probs_TK = probs_TK * scaling_factor
  return probs_TK, idx_TK


def topk_routing(logits_TE, topk, **kwargs):
  """Megatron's `topk_routing_with_score_function`: (probs [T,E], routing_map [T,E] bool)."""
  probs_TK, idx_TK = topk_routing_sparse(logits_TE, topk, **kwargs)
  onehot_TKE = jax.nn.one_hot(idx_TK, logits_TE.shape[-1], dtype=jnp.float32)
  return jnp.einsum("tk,tke->te", probs_TK, onehot_TKE), onehot_TKE.sum(1) > 0


class Routing(NamedTuple):
  probs_TK: jax.Array             # combine weights of the chosen experts
  idx_TK: jax.Array               # chosen expert ids
  aux_loss: jax.Array             # coeff-scaled, added to the objective
  z_loss: jax.Array               # coeff-scaled, added to the objective
  tokens_per_expert_E: jax.Array  # routed (token, expert) pairs per expert


class TopKRouter(nn.Module):
  """Linear gate [H, E] → top-k experts per token, plus the balancing losses."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_TH: jax.Array) -> Routing:
    s = self.spec
    E, K = s.num_experts, s.router_topk
    w_HE = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(s.init_std),
                                                             ("embed", None)),
                      (s.hidden_size, E), s.param_dtype)
    logits_TE = jnp.dot(x_TH.astype(jnp.float32), w_HE.astype(jnp.float32))
    probs_TK, idx_TK = topk_routing_sparse(
        logits_TE, K, use_pre_softmax=s.router_pre_softmax, num_groups=s.router_num_groups,
        group_topk=s.router_group_topk, scaling_factor=s.router_topk_scaling_factor,
        score_function=s.router_score_function)
    tokens_per_expert_E = jax.nn.one_hot(idx_TK, E, dtype=jnp.float32).sum((0, 1))
    T = x_TH.shape[0]
    aux = jnp.zeros((), jnp.float32)
    if s.router_load_balancing_type == "aux_loss" and s.aux_loss_coeff:
      routing_map_TE, scores_TE = losses.compute_routing_scores_for_aux_loss(
          logits_TE, K, s.router_score_function)
      aux = losses.switch_load_balancing_loss(scores_TE, routing_map_TE.sum(0), T, K, E, s.aux_loss_coeff)
    z = losses.z_loss(logits_TE, s.z_loss_coeff) if s.z_loss_coeff else jnp.zeros((), jnp.float32)
    return Routing(probs_TK, idx_TK, aux, z, tokens_per_expert_E)
