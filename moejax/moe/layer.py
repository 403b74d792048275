"""MoELayer: route → dispatch → routed experts → combine (+ shared experts)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.moe.dispatch import TokenDispatcher
from moejax.moe.experts import GroupedMLP, SharedExpertMLP
from moejax.moe.router import TopKRouter, expert_capacity


class MoEStats(NamedTuple):
  aux_loss: jax.Array             # coeff-scaled
  z_loss: jax.Array               # coeff-scaled
  tokens_per_expert_E: jax.Array  # routed pairs per expert (after dropping, without padding tokens)
  dropped_fraction: jax.Array     # share of the top-k pairs dropped by capacity
  logs: dict                      # {loss name: loss / coeff}, as Megatron logs them


class MoELayer(nn.Module):
  """Drop-in Flax MoE block. Call it under `jax.set_mesh(mesh)` and
  `nn.logical_axis_rules(rules)` to shard it, or plainly on one device."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BSH: jax.Array, padding_mask_BS: jax.Array | None = None
               ) -> tuple[jax.Array, MoEStats]:
    """padding_mask_BS: True at padding tokens, kept out of every routing statistic."""
    s = self.spec
    B, S, H = x_BSH.shape
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "seq", "embed"))
    pad_T = None if padding_mask_BS is None else padding_mask_BS.reshape(B * S)
    route = TopKRouter(s, name="router")(x_BSH.reshape(B * S, H), B, pad_T)
    probs_BSK = nn.with_logical_constraint(route.probs_TK.reshape(B, S, -1), ("batch", "seq", None))
    idx_BSK = nn.with_logical_constraint(route.idx_TK.reshape(B, S, -1), ("batch", "seq", None))
    dispatcher = TokenDispatcher(s.num_experts, s.router_topk, s.token_dispatcher_type, s.token_exchange,
                                 s.exchange_capacity_factor)
    keep_BSK, capacity = None, None
    if s.expert_capacity_factor is not None:  # pairs dropped by capacity (router.apply_token_dropping)
      capacity = expert_capacity(B * S, s.num_experts, s.router_topk, s.expert_capacity_factor)
      keep_TK = jnp.take_along_axis(route.routing_map_TE, route.idx_TK, axis=1)
      keep_BSK = nn.with_logical_constraint(keep_TK.reshape(B, S, -1), ("batch", "seq", None))
    shared = None
    if s.shared_expert_intermediate_size:
      shared = SharedExpertMLP(s, s.shared_expert_intermediate_size, gate=s.shared_expert_gate,
                               name="shared_experts")
    # Overlap: the shared experts depend only on x, so XLA may run them while the
    # tokens are exchanged. Without it they wait for the routed output.
    shared_BSH = shared(x_BSH) if shared is not None and s.shared_expert_overlap else None
    out_BSH = GroupedMLP(s, name="experts")(x_BSH, probs_BSK.astype(x_BSH.dtype), idx_BSK, dispatcher,
                                            keep_BSK, capacity)
    if shared is not None and shared_BSH is None:
      out_BSH, x_after_BSH = jax.lax.optimization_barrier((out_BSH, x_BSH))
      shared_BSH = shared(x_after_BSH)
    if shared_BSH is not None:
      out_BSH = out_BSH + shared_BSH
    out_BSH = nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
    return out_BSH, MoEStats(route.aux_loss, route.z_loss, route.tokens_per_expert_E,
                             route.dropped_fraction, route.logs)
