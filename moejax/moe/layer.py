"""MoELayer: route → dispatch → routed experts → combine (+ shared experts).

Legend: B sequences, S positions, H hidden, K top-k, T = B·S tokens (this device's inside
the shard_map body), E experts, E_l experts on this device.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from moejax.config import ModelSpec
from moejax.kernels.grouped_gemm.api import pallas_interpreted
from moejax.layers.memory import keep_all_but_varying_casts, remat_module
from moejax.moe.dispatch import AllGatherTokenDispatcher, AllToAllTokenDispatcher, Collectives, MoEAxes
from moejax.moe.experts import W1_AXES, W2_AXES, GroupedMLP, SharedExpertMLP, grouped_mlp
from moejax.moe.router import Routing, TopKRouter, capacity_rows
from moejax.parallel.sharding import current_mesh


class MoEStats(NamedTuple):
  aux_loss: jax.Array             # coeff-scaled
  z_loss: jax.Array               # coeff-scaled
  tokens_per_expert_E: jax.Array  # routed pairs per expert (after dropping, without padding tokens)
  dropped_fraction: jax.Array     # share of the top-k pairs dropped by capacity
  logs: dict                      # {loss name: loss / coeff}, as Megatron logs them


class MoELayer(nn.Module):
  """Drop-in Flax MoE block. Call it under `jax.set_mesh(mesh)` and
  `nn.logical_axis_rules(rules)` to shard it, or plainly on one device.

  `collectives` replaces the token-moving collectives (default: moe.token_exchange's).
  """
  spec: ModelSpec
  collectives: Collectives | None = None

  @nn.compact
  def __call__(self, x_BSH: jax.Array, padding_mask_BS: jax.Array | None = None
               ) -> tuple[jax.Array, MoEStats]:
    """padding_mask_BS: True at padding tokens, kept out of every routing statistic."""
    s = self.spec
    B, S, H = x_BSH.shape
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "seq", "embed"))
    pad_T = None if padding_mask_BS is None else padding_mask_BS.reshape(B * S)
    route = TopKRouter(s, name="router")(x_BSH.reshape(B * S, H), B, pad_T)
    w1, w2 = GroupedMLP(s, name="experts")()
    shared = None
    if s.moe.shared_expert_intermediate_size:
      shared = remat_module(s, "shared_experts", SharedExpertMLP)(
          s, s.moe.shared_expert_intermediate_size, gate=s.moe.shared_expert_gate, name="shared_experts")
    # Overlap: the shared experts depend only on x, so XLA may run them while the
    # tokens are exchanged. Without it they wait for the routed output.
    shared_BSH = shared(x_BSH) if shared is not None and s.moe.shared_expert_overlap else None
    out_BSH = self._routed_experts(x_BSH, route, w1, w2)
    if shared is not None and shared_BSH is None:
      out_BSH, x_after_BSH = jax.lax.optimization_barrier((out_BSH, x_BSH))
      shared_BSH = shared(x_after_BSH)
    if shared_BSH is not None:
      out_BSH = out_BSH + shared_BSH
    out_BSH = nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
    return out_BSH, MoEStats(route.aux_loss, route.z_loss, route.tokens_per_expert_E,
                             route.dropped_fraction, route.logs)

  def _routed_experts(self, x_BSH, route: Routing, w1, w2):
    """dispatch → grouped_mlp → combine, inside one shard_map over the mesh (plain on one device)."""
    moe = self.spec.moe
    B, S, H = x_BSH.shape
    K = moe.router.router_topk
    mesh = current_mesh()
    axes = MoEAxes() if mesh is None else MoEAxes.current(B, S)
    collectives = self.collectives or Collectives(moe.dispatch.token_exchange)
    capacity = capacity_rows(moe.router, B * S, moe.num_experts)
    # alltoall exchanges over ep: it needs the tokens sharded over every ep axis.
    use_a2a = moe.dispatch.token_dispatcher_type == "alltoall" and all(a in axes.token for a in axes.ep)
    mesh_axes = tuple(mesh.axis_names) if mesh is not None else ()
    constrain = lambda v: nn.with_logical_constraint(v.reshape(B, S, -1), ("batch", "seq", None))
    keep_BSK = None if route.keep_TK is None else constrain(route.keep_TK)

    def body(x_BSH, probs_BSK, idx_BSK, keep_BSK, w1, w2):
      b, s = x_BSH.shape[:2]
      x_TH, probs_TK, idx_TK = (v.reshape(b * s, *v.shape[2:]) for v in (x_BSH, probs_BSK, idx_BSK))
      keep_TK = None if keep_BSK is None else keep_BSK.reshape(b * s, K)
      E_l = w1.shape[0]
      allgather = AllGatherTokenDispatcher(axes, E_l, collectives, capacity)

      def run(dispatcher, plan, x_TH, probs_TK, w1, w2):
        rows, handle = dispatcher.dispatch(x_TH, probs_TK, plan)
        y_RH = grouped_mlp(rows.x_RH, rows.group_sizes_El, rows.probs_R, w1, w2, impl=moe.grouped_gemm_impl,
                           spec=self.spec)
        return dispatcher.combine(y_RH, handle)

      operands = (x_TH, probs_TK, w1, w2)
      if not use_a2a:
        out_TH = run(allgather, allgather.plan(idx_TK, keep_TK), *operands)
      else:
        alltoall = AllToAllTokenDispatcher(axes, moe.num_experts, E_l, collectives,
                                           moe.dispatch.exchange_capacity_factor, capacity)
        plan = alltoall.plan(idx_TK, keep_TK)
        if not alltoall.bounded(b * s, K):
          out_TH = run(alltoall, plan, *operands)
        else:  # rare overflow of the bounded buffer: the allgather path for this step
          # (rematerialized, so the untaken branch keeps no large residuals).
          slow = jax.checkpoint(lambda *ops: run(allgather, allgather.plan(idx_TK, keep_TK), *ops))
          out_TH = jax.lax.cond(alltoall.overflows(plan, mesh_axes), slow,
                                lambda *ops: run(alltoall, plan, *ops), *operands)
      return out_TH.reshape(b, s, H).astype(x_BSH.dtype)

    probs_BSK = constrain(route.probs_TK)
    if moe.apply_probs_on_input:  # top-1: scale each token before its expert, which then weighs it by 1
      x_BSH = (x_BSH.astype(jnp.float32) * probs_BSK.astype(jnp.float32)).astype(x_BSH.dtype)
      probs_BSK = jnp.ones_like(probs_BSK)
    args = (x_BSH, probs_BSK.astype(x_BSH.dtype), constrain(route.idx_TK), keep_BSK, w1, w2)
    if mesh is None:
      return body(*args)
    tok = P(axes.batch or None, axes.seq or None, None)
    w_specs = tuple(nn.logical_to_mesh_axes(a) for a in (W1_AXES, W2_AXES))
    routed = jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, tok) + w_specs, out_specs=tok)
    if pallas_interpreted(moe.grouped_gemm_impl):  # host callbacks: no checkpoint around them (tests only)
      return routed(*args)
    return jax.checkpoint(routed, prevent_cse=False, policy=keep_all_but_varying_casts)(*args)
