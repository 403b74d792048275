"""TopKRouter and the routing functions of Megatron-Core's moe_utils/router.

Legend: T tokens, E experts, K top-k, B sequences, H hidden, C capacity.
Router math runs in fp32 (fp64 with `router_dtype='fp64'` and jax x64 on).
The module works in the global (GSPMD) view: token counts, capacities and
losses cover the whole micro-batch whatever the layout. Megatron computes
`aux_loss` and capacities per data-parallel rank, so the two agree at DP=1.

Non-trainable state lives in the `moe_state` collection (Megatron's buffers):
`expert_bias` (persistent) and the step counters `local_tokens_per_expert`,
`global_tokens_per_expert`, `ga_steps`; `finish_step` updates the bias and
resets the counters after the optimizer step. Router replay reads expert ids
from the `routing_replay` collection and records them into `routing_record`
(see moejax/moe/replay.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.moe import losses

LOSS_TYPES = ("aux_loss", "seq_aux_loss", "global_aux_loss")
LOG_NAMES = {"aux_loss": "load_balancing_loss", "seq_aux_loss": "seq_load_balancing_loss",
             "global_aux_loss": "global_load_balancing_loss"}


def _float_dtype(x):
  return jnp.float64 if x.dtype == jnp.float64 else jnp.float32


def _group_limited_topk(scores_TE, topk, num_groups, group_topk):
  T, E = scores_TE.shape
  grouped = scores_TE.reshape(T, num_groups, E // num_groups)
  group_scores_TG = jax.lax.top_k(grouped, topk // group_topk)[0].sum(-1)
  _, gidx = jax.lax.top_k(group_scores_TG, group_topk)
  group_mask_TG = jax.nn.one_hot(gidx, num_groups, dtype=jnp.bool_).any(axis=1)
  mask_TE = jnp.repeat(group_mask_TG, E // num_groups, axis=1)
  return jax.lax.top_k(jnp.where(mask_TE, scores_TE, -jnp.inf), topk)


def _topk(scores_TE, topk, num_groups, group_topk, replay_idx_TK):
  if replay_idx_TK is not None:  # Megatron's RouterReplay: gather the scores of the given ids
    idx_TK = replay_idx_TK.astype(jnp.int32)
    return jnp.take_along_axis(scores_TE, idx_TK, axis=1), idx_TK
  if group_topk:
    return _group_limited_topk(scores_TE, topk, num_groups, group_topk)
  return jax.lax.top_k(scores_TE, topk)


def topk_routing_sparse(logits_TE, topk, *, use_pre_softmax=False, num_groups=None, group_topk=None,
                        scaling_factor=None, score_function="softmax", expert_bias=None,
                        replay_idx_TK=None):
  """Like `topk_routing` but returns (probs [T,K], expert indices [T,K]).

  `replay_idx_TK` replaces the top-k selection by the given expert ids.
  """
  logits_TE = logits_TE.astype(_float_dtype(logits_TE))
  sel = (num_groups, group_topk, replay_idx_TK)
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
    if topk > 1:
      probs_TK = probs_TK / (probs_TK.sum(-1, keepdims=True) + 1e-20)
  else:
    raise ValueError(f"score_function={score_function!r} must be 'softmax' or 'sigmoid'")
  if scaling_factor:
    probs_TK = probs_TK * scaling_factor
  return probs_TK, idx_TK


def _densify(probs_TK, idx_TK, num_experts):
  rows_T1 = jnp.arange(idx_TK.shape[0])[:, None]
  probs_TE = jnp.zeros((idx_TK.shape[0], num_experts), probs_TK.dtype).at[rows_T1, idx_TK].set(probs_TK)
  routing_map_TE = jnp.zeros((idx_TK.shape[0], num_experts), jnp.bool_).at[rows_T1, idx_TK].set(True)
  return probs_TE, routing_map_TE


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


def expert_capacity(num_tokens: int, num_experts: int, topk: int, capacity_factor: float) -> int:
  """Megatron's `get_capacity(T·K, E, capacity_factor)` = ceil(T·K/E · capacity_factor)."""
  return math.ceil((num_tokens * topk / num_experts) * capacity_factor)


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


def updated_expert_bias(tokens_per_expert, expert_bias, rate):
  """Megatron's `get_updated_expert_bias`: b + rate·sign(mean(c) - c), over the last axis.

  Counts must already be summed over the step (all replicas and micro-batches).
  """
  c = tokens_per_expert.astype(jnp.float32)
  avg = c.sum(-1, keepdims=True) / c.shape[-1]
  return expert_bias + jnp.sign(avg - c) * rate


def finish_step(moe_state, bias_update_rate: float):
  """After the optimizer step: update every expert bias from its step counts, zero the counters."""
  def visit(node):
    if not isinstance(node, dict):
      return node
    node = {k: visit(v) for k, v in node.items()}
    if "expert_bias" in node:
      node["expert_bias"] = updated_expert_bias(node["local_tokens_per_expert"], node["expert_bias"],
                                                bias_update_rate)
    for k in ("local_tokens_per_expert", "global_tokens_per_expert", "ga_steps"):
      if k in node:
        node[k] = jnp.zeros_like(node[k])
    return node
  return visit(dict(moe_state)) if moe_state else moe_state


def aux_loss_coeffs(spec: ModelSpec) -> dict[str, float]:
  """{loss type: coeff} of the enabled aux losses (Megatron's `get_aux_loss_coeff`)."""
  types = spec.router_load_balancing_type
  coeffs = spec.aux_loss_coeff
  if isinstance(types, str):
    types, coeffs = (types,), (coeffs,)
  elif not isinstance(coeffs, (tuple, list)):
    coeffs = (coeffs,) * len(types)
  return {t: float(c) for t, c in zip(types, coeffs) if t in LOSS_TYPES and c > 0}


def _load_balancing_types(spec: ModelSpec) -> tuple[str, ...]:
  t = spec.router_load_balancing_type
  return (t,) if isinstance(t, str) else tuple(t)


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


class TopKRouter(nn.Module):
  """Linear gate [H, E] → top-k experts per token, plus the balancing losses."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_TH: jax.Array, num_sequences: int = 1, padding_mask_T: jax.Array | None = None
               ) -> Routing:
    """x_TH: tokens of `num_sequences` sequences, sequence-major ([B,S] flattened).

    padding_mask_T: True at padding tokens, left out of every statistic.
    """
    s = self.spec
    E, K, T = s.num_experts, s.router_topk, x_TH.shape[0]
    rdt = jnp.float64 if s.router_dtype == "fp64" else jnp.float32
    w_HE = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(s.init_std),
                                                             ("embed", None)),
                      (s.hidden_size, E), s.param_dtype)
    if s.input_jitter_eps:
      if not self.has_rng("router"):
        raise ValueError("moe.input_jitter_eps needs a 'router' rng: apply(..., rngs={'router': key})")
      eps = s.input_jitter_eps
      x_TH = x_TH * jax.random.uniform(self.make_rng("router"), x_TH.shape, x_TH.dtype, 1 - eps, 1 + eps)
    logits_TE = jnp.dot(x_TH.astype(rdt), w_HE.astype(rdt))
    if s.router_force_load_balancing:  # benchmark mode: random logits, straight-through gradient
      key = self.make_rng("router") if self.has_rng("router") else jax.random.key(0)
      logits_TE = logits_TE + jax.lax.stop_gradient(jax.random.normal(key, logits_TE.shape, rdt) - logits_TE)
    keep_T = jnp.ones((T,), jnp.bool_) if padding_mask_T is None else ~padding_mask_T.reshape(T)

    zero = jnp.zeros((), jnp.float32)
    z = (losses.z_loss(logits_TE, s.z_loss_coeff, padding_mask_T).astype(jnp.float32)
         if s.z_loss_coeff else zero)
    logs = {"z_loss": z / s.z_loss_coeff if s.z_loss_coeff else zero}

    replay_idx_TK = None
    if self.has_variable("routing_replay", "idx_TK"):
      replay_idx_TK = self.get_variable("routing_replay", "idx_TK")
    state = {}
    if s.router_enable_expert_bias:
      state["expert_bias"] = self.variable("moe_state", "expert_bias", jnp.zeros, (E,), jnp.float32)
      state["local_tokens_per_expert"] = self.variable("moe_state", "local_tokens_per_expert",
                                                       jnp.zeros, (E,), jnp.float32)
    coeffs = aux_loss_coeffs(s)
    if "global_aux_loss" in coeffs:
      state["global_tokens_per_expert"] = self.variable("moe_state", "global_tokens_per_expert",
                                                        jnp.zeros, (E,), jnp.float32)
      state["ga_steps"] = self.variable("moe_state", "ga_steps", jnp.zeros, (), jnp.float32)

    if "sinkhorn" in _load_balancing_types(s):
      probs_TE, topk_map_TE, idx_TK = sinkhorn_routing(logits_TE, K)
    else:
      bias = state["expert_bias"].value if "expert_bias" in state else None
      probs_TK, idx_TK = topk_routing_sparse(
          logits_TE, K, use_pre_softmax=s.router_pre_softmax, num_groups=s.router_num_groups,
          group_topk=s.router_group_topk, scaling_factor=s.router_topk_scaling_factor,
          score_function=s.router_score_function, expert_bias=bias, replay_idx_TK=replay_idx_TK)
      probs_TE, topk_map_TE = _densify(probs_TK, idx_TK, E)

    if s.expert_capacity_factor is not None:
      probs_TE, routing_map_TE = apply_token_dropping(
          probs_TE, topk_map_TE, K, s.expert_capacity_factor, s.token_drop_policy,
          s.pad_expert_input_to_capacity)
    else:
      routing_map_TE = topk_map_TE
    kept_TE = topk_map_TE & routing_map_TE & keep_T[:, None]
    n_valid = jnp.maximum(keep_T.sum(), 1).astype(jnp.float32)
    dropped = 1.0 - kept_TE.sum().astype(jnp.float32) / (n_valid * K)
    probs_TK = jnp.take_along_axis(probs_TE, idx_TK, axis=1)
    counts_E = (routing_map_TE & keep_T[:, None]).sum(0).astype(jnp.float32)

    aux = zero
    if coeffs:
      aux_map_TE, scores_TE = losses.compute_routing_scores_for_aux_loss(
          logits_TE, K, s.router_score_function, padding_mask_T)
      for kind, coeff in coeffs.items():
        if kind == "aux_loss":
          loss = losses.aux_loss(scores_TE, aux_map_TE, K, E, coeff, padding_mask_T is not None)
        elif kind == "seq_aux_loss":
          loss = losses.seq_aux_loss(scores_TE, aux_map_TE, num_sequences, K, E, coeff,
                                     padding_mask_T is not None)
        else:
          gl = state["global_tokens_per_expert"]
          steps = state["ga_steps"]
          total_E = gl.value + aux_map_TE.sum(0).astype(jnp.float32)
          n = steps.value + 1.0
          loss = losses.aux_loss(scores_TE, aux_map_TE, K, E, coeff, padding_mask_T is not None,
                                 tokens_per_expert_E=total_E / n)
          if self.is_mutable_collection("moe_state") and not self.is_initializing():
            gl.value, steps.value = total_E, n
        loss = loss.astype(jnp.float32)
        aux = aux + loss
        logs[LOG_NAMES[kind]] = loss / coeff

    if ("local_tokens_per_expert" in state and self.is_mutable_collection("moe_state")
        and not self.is_initializing()):
      state["local_tokens_per_expert"].value = state["local_tokens_per_expert"].value + counts_E
    if self.is_mutable_collection("routing_record") and not self.is_initializing():
      self.put_variable("routing_record", "idx_TK", idx_TK.astype(jnp.int32))
    return Routing(probs_TK, idx_TK, aux, z, counts_E, probs_TE, routing_map_TE, dropped, logs)
