"""Routed experts (GroupedMLP, SequentialMLP reference) and SharedExpertMLP.

Expert weights: w1 [E, H, 2F] with gate and up interleaved along the last axis
((f, 0) gate, (f, 1) up), so sharding 2F over expert-TP keeps each pair on one
device whatever etp is; w2 [E, F, H]. The computation is the pure function
`grouped_mlp` of (rows sorted by expert, group sizes, routing probs, weights); its activation
`weighted_swiglu` is Megatron's fused weighted SwiGLU (the routing prob scales each row).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.kernels.grouped_gemm import grouped_gemm
from moejax.kernels.swiglu import weighted_swiglu_bwd_rows
from moejax.kernels.vma import sum_onto, vary_like
from moejax.layers.memory import remat_fn, tag
from moejax.layers.mlp import MLP

W1_AXES = ("expert", "expert_embed", "expert_mlp")
W2_AXES = ("expert", "expert_mlp", "expert_embed")


def swiglu_interleaved(h_M2F):
  h = h_M2F.reshape(*h_M2F.shape[:-1], -1, 2)
  return jax.nn.silu(h[..., 0]) * h[..., 1]


@jax.custom_vjp
def weighted_swiglu(h_R2F, probs_R):
  """silu(gate) · up · prob per row, computed in fp32 and returned in h's dtype.

  Its VJP keeps only (h, probs), as Megatron's fused weighted SwiGLU does: autodiff would also
  store silu(gate) · up for the probs' gradient, a third array of h's rows (benchmarks/RESULTS.md).
  """
  return _weighted_swiglu_fwd(h_R2F, probs_R)[0]


def _weighted_swiglu_fwd(h_R2F, probs_R):
  out = swiglu_interleaved(h_R2F.astype(jnp.float32)) * probs_R[:, None].astype(jnp.float32)
  return out.astype(h_R2F.dtype), (h_R2F, probs_R)


def _weighted_swiglu_bwd(res, g_RF):
  """dh and dprobs in one pass over h and g: the Pallas Triton kernel on a GPU
  (moejax.kernels.swiglu), else `_weighted_swiglu_bwd_xla`."""
  h_R2F, probs_R = res
  if jax.devices()[0].platform != "gpu":
    dh_R2F, dprobs_R = _weighted_swiglu_bwd_xla(res, g_RF)
  else:
    dh_R2F, dprobs_R = weighted_swiglu_bwd_rows(h_R2F, g_RF, probs_R)
    dh_R2F, dprobs_R = vary_like(dh_R2F, h_R2F, g_RF), vary_like(dprobs_R.astype(probs_R.dtype), probs_R, g_RF)
  # rows replicated over etp (tp without sequence parallelism) see a slice of F on each rank:
  # their probs' gradient is the sum of the slices'
  return dh_R2F, sum_onto(dprobs_R, probs_R)


def _weighted_swiglu_bwd_xla(res, g_RF):
  """The backward as one elementwise graph over the [R, F, 2] pairs (each element reads its gate
  and up), so XLA can compute dh and dprobs in one pass (a reduction with an elementwise output).
  The barrier keeps XLA from sharing the forward's fp32 gate values with this pass, which would
  keep them alive from the forward to here (2x h's bytes). On the H200 XLA still splits it in two
  passes (it keeps the sigmoid as an fp32 array between them), hence the kernel there."""
  h_R2F, probs_R = jax.lax.optimization_barrier(res)
  h = h_R2F.astype(jnp.float32).reshape(*h_R2F.shape[:-1], -1, 2)
  gate, up = h[..., :1], h[..., 1:]                        # [R, F, 1] each
  sig = jax.nn.sigmoid(gate)
  silu = gate * sig
  g = g_RF.astype(jnp.float32)[..., None]                  # [R, F, 1]
  is_gate = jax.lax.broadcasted_iota(jnp.int32, h.shape, h.ndim - 1) == 0
  p = probs_R.astype(jnp.float32)[:, None, None]
  dh = g * p * jnp.where(is_gate, up * sig * (1 + gate * (1 - sig)), silu)
  dprobs = jnp.where(is_gate, g * silu * up, 0.0).sum(axis=(-2, -1))
  return dh.reshape(h_R2F.shape).astype(h_R2F.dtype), dprobs.astype(probs_R.dtype)


weighted_swiglu.defvjp(_weighted_swiglu_fwd, _weighted_swiglu_bwd)


def grouped_mlp(x_RH, group_sizes_E, probs_R, w1_EH2F, w2_EFH, *, impl: str = "auto", spec: ModelSpec | None = None):
  """Gated expert MLP over rows sorted by expert; the routing prob scales the activation.
  With `spec`, the fc1 input and output carry their offload names, and with `moe_act` selected for
  recomputation the activation's output (fc2's input) is not kept but recomputed from fc1's output
  in the backward pass, as Megatron's `--recompute-modules moe_act` does (moejax/layers/memory.py)."""

  def act_fc2(h_R2F, probs_R, w2_EFH, group_sizes_E):
    return grouped_gemm(weighted_swiglu(h_R2F, probs_R), w2_EFH, group_sizes_E, impl=impl)

  if spec is not None:
    x_RH, act_fc2 = tag(x_RH, "expert_fc1"), remat_fn(spec, "moe_act", act_fc2)
  h_R2F = grouped_gemm(x_RH, w1_EH2F, group_sizes_E, impl=impl)
  if spec is not None:
    h_R2F = tag(h_R2F, "moe_act")
  return act_fc2(h_R2F, probs_R, w2_EFH, group_sizes_E)


class _ExpertWeights(nn.Module):
  spec: ModelSpec

  def weights(self):
    """w1 [E, H, 2F] and w2 [E, F, H] in the compute dtype."""
    s = self.spec
    E, H, F = s.moe.num_experts, s.hidden_size, s.moe_ffn_hidden_size
    normal = nn.initializers.normal
    w1 = self.param("w1", nn.with_logical_partitioning(normal(s.init_method_std), W1_AXES), (E, H, 2 * F),
                    s.params_dtype)
    w2 = self.param("w2", nn.with_logical_partitioning(normal(s.output_layer_init_std), W2_AXES), (E, F, H),
                    s.params_dtype)
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
