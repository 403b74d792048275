"""MoELayer: route → dispatch → routed experts → combine (+ shared experts)."""
from __future__ import annotations

from typing import NamedTuple

import jax
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.moe.dispatch import AllGatherTokenDispatcher
from moejax.moe.experts import GroupedMLP, SharedExpertMLP
from moejax.moe.router import TopKRouter


class MoEStats(NamedTuple):
  aux_loss: jax.Array             # coeff-scaled
  z_loss: jax.Array               # coeff-scaled
  tokens_per_expert_E: jax.Array


class MoELayer(nn.Module):
  """Drop-in Flax MoE block. Call it under `jax.set_mesh(mesh)` and
  `nn.logical_axis_rules(rules)` to shard it, or plainly on one device."""
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BSH: jax.Array) -> tuple[jax.Array, MoEStats]:
    s = self.spec
    B, S, H = x_BSH.shape
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "seq", "embed"))
    route = TopKRouter(s, name="router")(x_BSH.reshape(B * S, H))
    probs_BSK = nn.with_logical_constraint(route.probs_TK.reshape(B, S, -1), ("batch", "seq", None))
    idx_BSK = nn.with_logical_constraint(route.idx_TK.reshape(B, S, -1), ("batch", "seq", None))
    dispatcher = AllGatherTokenDispatcher(s.num_experts, s.router_topk)
    out_BSH = GroupedMLP(s, name="experts")(x_BSH, probs_BSK.astype(x_BSH.dtype), idx_BSK, dispatcher)
    if s.shared_expert_intermediate_size:
      out_BSH = out_BSH + SharedExpertMLP(s, s.shared_expert_intermediate_size, name="shared_experts")(x_BSH)
    out_BSH = nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
    return out_BSH, MoEStats(route.aux_loss, route.z_loss, route.tokens_per_expert_E)
