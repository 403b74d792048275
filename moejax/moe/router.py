"""TopKRouter and the routing functions of Megatron-Core's moe_utils/router, as stages:

  score    gate logits (input jitter, forced balancing)
  select   top-k: softmax/sigmoid, pre-softmax, group-limited, expert bias, scaling, replay; or sinkhorn
  drop     capacity: which (token, k) pairs experts receive
  balance  aux losses and z-loss (moejax/moe/losses.py)

Legend: T tokens, E experts, K top-k, B sequences, H hidden, C capacity.
Router math runs in fp32 (fp64 with `router_dtype='fp64'` and jax x64 on).
The module works in the global (GSPMD) view: token counts, capacities and
losses cover the whole micro-batch whatever the layout. Megatron computes
`aux_loss` and capacities per data-parallel rank, so the two agree at DP=1.
Non-trainable state (expert bias, global-aux counts) lives in moejax/moe/state.py.
"""
from __future__ import annotations

import math
import typing
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import LoadBalancingType, ModelSpec, RouterSpec
from moejax.moe import losses
from moejax.moe.state import MOE_STATE, ROUTING_RECORD, ROUTING_REPLAY, ExpertBias, GlobalAuxCounts

LOSS_TYPES = tuple(t for t in typing.get_args(LoadBalancingType) if t.endswith("aux_loss"))
LOG_NAMES = {"aux_loss": "load_balancing_loss", "seq_aux_loss": "seq_load_balancing_loss",
             "global_aux_loss": "global_load_balancing_loss"}


# ------------------------------------------------------------------------------ select
def _group_limited_topk(scores_TE, topk, num_groups, group_topk, group_scoring="sum_topk"):
  T, E = scores_TE.shape
  grouped = scores_TE.reshape(T, num_groups, E // num_groups)
  if group_scoring == "max":
    group_scores_TG = grouped.max(-1)
  else:
    per_group = 2 if group_scoring == "sum_top2" else topk // group_topk
    group_scores_TG = jax.lax.top_k(grouped, per_group)[0].sum(-1)
  _, gidx = jax.lax.top_k(group_scores_TG, group_topk)
  group_mask_TG = jax.nn.one_hot(gidx, num_groups, dtype=jnp.bool_).any(axis=1)
  mask_TE = jnp.repeat(group_mask_TG, E // num_groups, axis=1)
  return jax.lax.top_k(jnp.where(mask_TE, scores_TE, -jnp.inf), topk)


def _topk(scores_TE, topk, num_groups, group_topk, group_scoring, replay_idx_TK):
  if replay_idx_TK is not None:  # Megatron's RouterReplay: gather the scores of the given ids
    idx_TK = replay_idx_TK.astype(jnp.int32)
    return jnp.take_along_axis(scores_TE, idx_TK, axis=1), idx_TK
  if group_topk:
    return _group_limited_topk(scores_TE, topk, num_groups, group_topk, group_scoring)
  return jax.lax.top_k(scores_TE, topk)


def topk_routing_sparse(logits_TE, topk, *, use_pre_softmax=False, num_groups=None, group_topk=None,
                        scaling_factor=None, score_function="softmax", expert_bias=None,
                        replay_idx_TK=None, group_scoring="sum_topk", normalize=None):
  """Like `topk_routing` but returns (probs [T,K], expert indices [T,K]).

  `replay_idx_TK` replaces the top-k selection by the given expert ids; `group_scoring` is how
  group-limited routing scores a group (moe.router_group_scoring); `normalize` divides the top-k
  probs by their sum (moe.router_norm_topk_prob; None: Megatron's rule).
  """
  logits_TE = logits_TE.astype(losses.float_dtype(logits_TE))
  sel = (num_groups, group_topk, group_scoring, replay_idx_TK)
  if score_function == "softmax":
    if use_pre_softmax:
      probs_TK, idx_TK = _topk(jax.nn.softmax(logits_TE, -1), topk, *sel)
    else:
      top_TK, idx_TK = _topk(logits_TE, topk, *sel)
      probs_TK = jax.nn.softmax(top_TK, -1)
  elif score_function == "sigmoid":
    scores_TE = jax.nn.sigmoid(logits_TE)
    if expert_bias is not None:
      _, idx_TK = _topk(scores_TE + expert_bias.astype(scores_TE.dtype), topk, *sel)
      probs_TK = jnp.take_along_axis(scores_TE, idx_TK, axis=1)
    else:
      probs_TK, idx_TK = _topk(scores_TE, topk, *sel)
  else:
    raise ValueError(f"score_function={score_function!r} must be 'softmax' or 'sigmoid'")
  if normalize is None:
    normalize = score_function == "sigmoid" and topk > 1
  if normalize:
    probs_TK = probs_TK / (probs_TK.sum(-1, keepdims=True) + 1e-20)
  if scaling_factor:
    probs_TK = probs_TK * scaling_factor
  return probs_TK, idx_TK


def _densify(probs_TK, idx_TK, num_experts):
  """[T, E] probabilities (zero where unchosen) and routing map of the top-k choices.

  A one-hot sum over k, not a scatter at (row, expert): the k experts of a token are distinct, so
  the sum is exact, and it partitions over any token sharding (XLA's SPMD partitioner fails on the
  scatter's gathers when tokens are split over tp and pp is manual, as in the pipeline)."""
  hot_TKE = jax.nn.one_hot(idx_TK, num_experts, dtype=jnp.bool_)
  probs_TE = jnp.sum(jnp.where(hot_TKE, probs_TK[..., None], jnp.zeros((), probs_TK.dtype)), axis=1)
  return probs_TE, jnp.any(hot_TKE, axis=1)


def topk_routing(logits_TE, topk, **kwargs):
  """Megatron's `topk_routing_with_score_function`: (probs [T,E], routing_map [T,E] bool)."""
  probs_TK, idx_TK = topk_routing_sparse(logits_TE, topk, **kwargs)
  return _densify(probs_TK, idx_TK, logits_TE.shape[-1])


def sinkhorn(cost, tol: float = 1e-4):
  """Megatron's Sinkhorn normalisation of exp(cost) [T,E] (S-BASE routing)."""
  cost = jnp.exp(cost)
  T, E = cost.shape
  eps = 1e-8

  def body(carry):
    _, d1_old, _ = carry
    d0 = (1.0 / T) / (jnp.sum(d1_old * cost, 1) + eps)
    d1 = (1.0 / E) / (jnp.sum(d0[:, None] * cost, 0) + eps)
    return d0, d1, jnp.mean(jnp.abs(d1_old - d1))

  init = (jnp.ones((T,), cost.dtype), jnp.ones((E,), cost.dtype), jnp.asarray(1e9, cost.dtype))
  d0, d1, _ = jax.lax.while_loop(lambda c: c[2] > tol, body, init)
  return d1 * cost * d0[:, None]


def sinkhorn_routing(logits_TE, topk):
  """Megatron's `sinkhorn_load_balancing` (training): experts from sinkhorn (no gradient),
  weights = sigmoid (K=1) or softmax (K>1) of the logits, masked by the routing map."""
  norm_TE = jax.lax.stop_gradient(sinkhorn(logits_TE.astype(jnp.float32)))
  _, idx_TK = jax.lax.top_k(norm_TE, topk)
  act_TE = jax.nn.sigmoid(logits_TE) if topk == 1 else jax.nn.softmax(logits_TE, -1)
  _, routing_map_TE = _densify(jnp.ones(idx_TK.shape, act_TE.dtype), idx_TK, logits_TE.shape[-1])
  return act_TE * routing_map_TE, routing_map_TE, idx_TK


def select_experts(logits_TE, r: RouterSpec, expert_bias=None, replay_idx_TK=None):
  """(dense probs [T,E], top-k map [T,E], expert ids [T,K]) by the spec's routing method."""
  if "sinkhorn" in load_balancing_types(r):
    return sinkhorn_routing(logits_TE, r.router_topk)
  probs_TK, idx_TK = topk_routing_sparse(
      logits_TE, r.router_topk, use_pre_softmax=r.router_pre_softmax, num_groups=r.router_num_groups,
      group_topk=r.router_group_topk, scaling_factor=r.router_topk_scaling_factor,
      score_function=r.router_score_function, expert_bias=expert_bias, replay_idx_TK=replay_idx_TK,
      group_scoring=r.router_group_scoring, normalize=r.router_norm_topk_prob)
  return (*_densify(probs_TK, idx_TK, logits_TE.shape[-1]), idx_TK)


# ------------------------------------------------------------------------------ drop
def expert_capacity(num_tokens: int, num_experts: int, topk: int, capacity_factor: float) -> int:
  """Megatron's `get_capacity(T·K, E, capacity_factor)` = ceil(T·K/E · capacity_factor)."""
  return math.ceil((num_tokens * topk / num_experts) * capacity_factor)


def capacity_rows(r: RouterSpec, num_tokens: int, num_experts: int) -> int | None:
  """Rows per expert under token dropping (None: dropless)."""
  if r.expert_capacity_factor is None:
    return None
  return expert_capacity(num_tokens, num_experts, r.router_topk, r.expert_capacity_factor)


def apply_token_dropping(probs, routing_map, topk, capacity_factor, drop_policy="probs",
                         pad_to_capacity=False):
  """Megatron's `apply_router_token_dropping`: keep at most C tokens per expert.

  drop_policy 'probs' keeps the highest-probability tokens, 'position' the
  earliest; with `pad_to_capacity` every expert gets exactly C rows (the extra
  rows carry probability 0). Returns (probs [T,E], routing_map [T,E] bool).
  """
  T, E = probs.shape
  C = expert_capacity(T, E, topk, capacity_factor)
  if C > T:
    capacity_mask_TE = jnp.ones((T, E), jnp.bool_)
  else:
    if drop_policy == "probs":
      key_ET = probs.T
    elif drop_policy == "position":
      key_ET = routing_map.T.astype(jnp.int32)
    else:
      raise ValueError(f"drop_policy={drop_policy!r} must be 'probs' or 'position'")
    _, keep_EC = jax.lax.top_k(key_ET, C)  # ties go to the earliest token
    capacity_mask_TE = jnp.zeros((E, T), jnp.bool_).at[jnp.arange(E)[:, None], keep_EC].set(True).T
  final_map_TE = capacity_mask_TE if pad_to_capacity else routing_map & capacity_mask_TE
  return probs * final_map_TE, final_map_TE


# ------------------------------------------------------------------------------ balance
def aux_loss_coeffs(r: RouterSpec) -> dict[str, float]:
  """{loss type: coeff} of the enabled aux losses (Megatron's `get_aux_loss_coeff`)."""
  types, coeffs = r.router_load_balancing_type, r.aux_loss_coeff
  if isinstance(types, str):
    types, coeffs = (types,), (coeffs,)
  elif not isinstance(coeffs, (tuple, list)):
    coeffs = (coeffs,) * len(types)
  return {t: float(c) for t, c in zip(types, coeffs) if t in LOSS_TYPES and c > 0}


def load_balancing_types(r: RouterSpec) -> tuple[str, ...]:
  t = r.router_load_balancing_type
  return (t,) if isinstance(t, str) else tuple(t)


def balancing_losses(logits_TE, r: RouterSpec, num_sequences: int, padding_mask_T=None,
                     global_counts: GlobalAuxCounts | None = None):
  """(sum of coeff-scaled aux losses, {log name: loss / coeff}, updated global-aux counts)."""
  coeffs = aux_loss_coeffs(r)
  aux, logs = jnp.zeros((), jnp.float32), {}
  if not coeffs:
    return aux, logs, global_counts
  K, E = r.router_topk, logits_TE.shape[-1]
  padded = padding_mask_T is not None
  aux_map_TE, scores_TE = losses.compute_routing_scores_for_aux_loss(
      logits_TE, K, r.router_score_function, padding_mask_T)
  for kind, coeff in coeffs.items():
    if kind == "aux_loss":
      loss = losses.aux_loss(scores_TE, aux_map_TE, K, E, coeff, padded)
    elif kind == "seq_aux_loss":
      loss = losses.seq_aux_loss(scores_TE, aux_map_TE, num_sequences, K, E, coeff, padded)
    else:  # global: counts summed over the step's micro-batches so far
      global_counts = GlobalAuxCounts(global_counts.global_tokens_per_expert + aux_map_TE.sum(0).astype(jnp.float32),
                                      global_counts.ga_steps + 1.0)
      loss = losses.aux_loss(scores_TE, aux_map_TE, K, E, coeff, padded,
                             tokens_per_expert_E=global_counts.global_tokens_per_expert / global_counts.ga_steps)
    loss = loss.astype(jnp.float32)
    aux = aux + loss
    logs[LOG_NAMES[kind]] = loss / coeff
  return aux, logs, global_counts


# ------------------------------------------------------------------------------ the module
class Routing(NamedTuple):
  probs_TK: jax.Array             # combine weights of the chosen experts (0 where dropped)
  idx_TK: jax.Array               # chosen expert ids
  aux_loss: jax.Array             # sum of the coeff-scaled aux losses, added to the objective
  z_loss: jax.Array               # coeff-scaled, added to the objective
  tokens_per_expert_E: jax.Array  # routed (token, expert) pairs per expert (after dropping, no padding)
  probs_TE: jax.Array             # dense probs after dropping (padded pairs carry 0)
  routing_map_TE: jax.Array       # dense map after dropping/padding to capacity: what experts receive
  dropped_fraction: jax.Array     # fraction of the top-k (token, expert) pairs dropped by capacity
  logs: dict                      # {name: loss / coeff} as Megatron logs them
  keep_TK: jax.Array | None = None  # pairs kept after capacity dropping (None: dropless)


class TopKRouter(nn.Module):
  """Linear gate [H, E] → top-k experts per token, plus the balancing losses."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_TH: jax.Array, num_sequences: int = 1, padding_mask_T: jax.Array | None = None
               ) -> Routing:
    """x_TH: tokens of `num_sequences` sequences, sequence-major ([B,S] flattened).

    padding_mask_T: True at padding tokens, left out of every statistic.
    """
    r, E, T = self.spec.moe.router, self.spec.moe.num_experts, x_TH.shape[0]
    logits_TE = self._score(x_TH)
    updating = self.is_mutable_collection(MOE_STATE) and not self.is_initializing()
    bias = self.variable(MOE_STATE, "expert_bias", ExpertBias.zeros, E) if r.router_enable_expert_bias else None
    replay = (self.get_variable(ROUTING_REPLAY, "idx_TK") if self.has_variable(ROUTING_REPLAY, "idx_TK")
              else None)

    probs_TE, topk_map_TE, idx_TK = select_experts(
        logits_TE, r, None if bias is None else bias.value.expert_bias, replay)
    routing_map_TE, keep_TK = topk_map_TE, None
    if r.expert_capacity_factor is not None:
      probs_TE, routing_map_TE = apply_token_dropping(probs_TE, topk_map_TE, r.router_topk,
                                                      r.expert_capacity_factor, r.token_drop_policy,
                                                      r.pad_expert_input_to_capacity)
      keep_TK = jnp.take_along_axis(routing_map_TE, idx_TK, axis=1)
    valid_T = jnp.ones((T,), jnp.bool_) if padding_mask_T is None else ~padding_mask_T.reshape(T)
    kept_TE = topk_map_TE & routing_map_TE & valid_T[:, None]
    dropped = 1.0 - kept_TE.sum().astype(jnp.float32) / (jnp.maximum(valid_T.sum(), 1) * r.router_topk)
    counts_E = (routing_map_TE & valid_T[:, None]).sum(0).astype(jnp.float32)

    z = jnp.zeros((), jnp.float32)
    if r.z_loss_coeff:
      z = losses.z_loss(logits_TE, r.z_loss_coeff, padding_mask_T).astype(jnp.float32)
    global_counts = None
    if "global_aux_loss" in aux_loss_coeffs(r):
      global_counts = self.variable(MOE_STATE, "global_aux", GlobalAuxCounts.zeros, E)
    aux, logs, new_global = balancing_losses(logits_TE, r, num_sequences, padding_mask_T,
                                             global_counts and global_counts.value)
    logs = {"z_loss": z / r.z_loss_coeff if r.z_loss_coeff else z, **logs}

    if updating:
      if bias is not None:
        bias.value = bias.value.count(counts_E)
      if global_counts is not None:
        global_counts.value = new_global
    if self.is_mutable_collection(ROUTING_RECORD) and not self.is_initializing():
      self.put_variable(ROUTING_RECORD, "idx_TK", idx_TK.astype(jnp.int32))
    probs_TK = jnp.take_along_axis(probs_TE, idx_TK, axis=1)
    return Routing(probs_TK, idx_TK, aux, z, counts_E, probs_TE, routing_map_TE, dropped, logs, keep_TK)

  def _score(self, x_TH):
    """Gate logits in the router dtype; jitter perturbs the input, forced balancing the logits."""
    s, r = self.spec, self.spec.moe.router
    rdt = jnp.float64 if r.router_dtype == "fp64" else jnp.float32
    w_HE = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(s.init_method_std),
                                                             ("embed", None)),
                      (x_TH.shape[-1], s.moe.num_experts), s.params_dtype)
    if r.input_jitter_eps:
      if not self.has_rng("router"):
        raise ValueError("moe.input_jitter_eps needs a 'router' rng: apply(..., rngs={'router': key})")
      eps = r.input_jitter_eps
      x_TH = x_TH * jax.random.uniform(self.make_rng("router"), x_TH.shape, x_TH.dtype, 1 - eps, 1 + eps)
    logits_TE = jnp.dot(x_TH.astype(rdt), w_HE.astype(rdt))
    if r.router_force_load_balancing:  # benchmark mode: random logits, straight-through gradient
      key = self.make_rng("router") if self.has_rng("router") else jax.random.key(0)
      logits_TE = logits_TE + jax.lax.stop_gradient(jax.random.normal(key, logits_TE.shape, rdt) - logits_TE)
    return logits_TE
