"""Routed experts (GroupedMLP, SequentialMLP reference) and SharedExpertMLP.

Expert weights: w1 [E, H, 2F] with gate and up interleaved along the last axis
((f, 0) gate, (f, 1) up), so sharding 2F over expert-TP keeps each pair on one
device whatever etp is; w2 [E, F, H]. The computation is the pure function
`grouped_mlp` of (rows sorted by expert, group sizes, routing probs, weights).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.kernels.grouped_gemm import grouped_gemm
from moejax.layers.memory import remat_fn, tag
from moejax.layers.mlp import MLP

W1_AXES = ("expert", "expert_embed", "expert_mlp")
W2_AXES = ("expert", "expert_mlp", "expert_embed")


def swiglu_interleaved(h_M2F):
  h = h_M2F.reshape(*h_M2F.shape[:-1], -1, 2)
  return jax.nn.silu(h[..., 0]) * h[..., 1]


def grouped_mlp(x_RH, group_sizes_E, probs_R, w1_EH2F, w2_EFH, *, impl: str = "auto", spec: ModelSpec | None = None):
  """Gated expert MLP over rows sorted by expert; the routing prob scales the activation.
  With `spec`, the fc1 input and output carry their offload names and the activation is
  recomputed when `moe_act` is selected (moejax/layers/memory.py)."""
  dtype = x_RH.dtype

  def act(h_R2F, probs_R):
    return (swiglu_interleaved(h_R2F) * probs_R[:, None].astype(h_R2F.dtype)).astype(dtype)

  if spec is not None:
    x_RH, act = tag(x_RH, "expert_fc1"), remat_fn(spec, "moe_act", act)
  h_R2F = grouped_gemm(x_RH, w1_EH2F, group_sizes_E, impl=impl)
  if spec is not None:
    h_R2F = tag(h_R2F, "moe_act")
  return grouped_gemm(act(h_R2F, probs_R), w2_EFH, group_sizes_E, impl=impl)


class _ExpertWeights(nn.Module):
  spec: ModelSpec

  def weights(self):
    """w1 [E, H, 2F] and w2 [E, F, H] in the compute dtype."""
    s = self.spec
    E, H, F = s.moe.num_experts, s.hidden_size, s.moe_ffn_hidden_size
    init = nn.initializers.normal(s.init_method_std)
    w1 = self.param("w1", nn.with_logical_partitioning(init, W1_AXES), (E, H, 2 * F), s.params_dtype)
    w2 = self.param("w2", nn.with_logical_partitioning(init, W2_AXES), (E, F, H), s.params_dtype)
    return w1.astype(s.dtype), w2.astype(s.dtype)


class GroupedMLP(_ExpertWeights):
  """All experts' weights for `grouped_mlp` (two grouped GEMMs, moejax.kernels.grouped_gemm);
  the MoE layer runs it on each device's local experts inside its shard_map."""

  @nn.compact
  def __call__(self) -> tuple[jax.Array, jax.Array]:
    return self.weights()


class SequentialMLP(_ExpertWeights):
  """Reference: a plain loop over experts on the unpermuted tokens (tests only)."""

  @nn.compact
  def __call__(self, x_TH, probs_TK, idx_TK):
    w1, w2 = self.weights()
    out_TH = jnp.zeros(x_TH.shape, jnp.float32)
    for e in range(self.spec.moe.num_experts):
      weight_T = jnp.sum(jnp.where(idx_TK == e, probs_TK, 0.0), axis=-1)
      y_TH = (swiglu_interleaved(x_TH @ w1[e]) * weight_T[:, None]) @ w2[e]
      out_TH = out_TH + y_TH
    return out_TH.astype(x_TH.dtype)


class SharedExpertMLP(MLP):
  """Experts every token goes through (DeepSeek, Qwen-MoE): a dense SwiGLU MLP.

  With `gate` (Qwen2-MoE's shared_expert_gate) the output is scaled per token by
  sigmoid(x @ w_gate), w_gate [H, 1].
  """
  gate: bool = False

  @nn.compact
  def __call__(self, x_BSH):
    out_BSH = super().__call__(x_BSH)
    if not self.gate:
      return out_BSH
    s = self.spec
    w_H1 = self.param("gate_weight", nn.with_logical_partitioning(nn.initializers.normal(s.init_method_std),
                                                                  ("embed", None)),
                      (s.hidden_size, 1), s.params_dtype)
    gate_BS1 = jax.nn.sigmoid(jnp.einsum("bsh,ho->bso", x_BSH.astype(jnp.float32), w_H1.astype(jnp.float32)))
    return (out_BSH * gate_BS1).astype(out_BSH.dtype)
