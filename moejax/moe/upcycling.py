"""Upcycling: a MoE layer's weights from a dense SwiGLU MLP (Megatron's --moe-use-upcycling,
megatron/core/transformer/moe/upcycling_utils.py; He et al. 2024, arXiv:2410.07524).

Legend: H hidden, F dense FFN, G granularity, F_e = F/G expert FFN, E experts, C = E/G copies,
K top-k, L leading (layer) axes of scanned weights.

Granularity G (`moe.upcycling_granularity`) cuts the dense FFN into G slices of F/G
(`moe.ffn_hidden_size` = F/G); the E experts are C = E/G copies of those slices, expert c·G + g
being slice g (Megatron's order). The router keeps its random init but in C "virtual groups": the
G experts of copy c share copy c's router column, so a token picks whole copies.

- G = 1: every expert is the dense MLP. With softmax after top-k (the default; also the
  normalised sigmoid with K > 1) a token's K probabilities sum to 1, so the upcycled layer
  computes exactly the dense MLP, whatever the router: the upcycled model equals the dense one.
- G > 1 (granular upcycling): with K a multiple of G, a token selects K/G whole copies, each of
  their slices weighted p_c/G with Σ p_c = 1, so the routed sum is (1/G)·MLP(x). As Megatron does,
  each of gate, up and down is scaled by s^(1/3) with s = G (s = E·G/K with softmax before top-k)
  to restore the output's scale. The relation, exact: the upcycled layer equals the dense MLP
  with weights (gate·c, up·c, down·c/G), c = G^(1/3); that is the dense MLP itself wherever
  SiLU is linear (small gate pre-activations), not exactly (SiLU(c·z) ≠ c·SiLU(z)).

Pure functions on weight trees with any leading axes, so they take a scanned stack of layers.
"""
from __future__ import annotations

import jax.numpy as jnp

from moejax.config import ModelSpec


def activation_scale(spec: ModelSpec) -> float:
  """Megatron's `_get_moe_activation_scale`: what the routed sum lacks against the dense MLP."""
  E, G, K = spec.moe.num_experts, spec.moe.upcycling_granularity, spec.moe.router.router_topk
  return E * G / K if spec.moe.router.router_pre_softmax else float(G)


def expert_weights(gate_LHF, up_LHF, down_LFH, spec: ModelSpec):
  """(w1 [L.., E, H, 2F_e] gate/up interleaved, w2 [L.., E, F_e, H]) from a dense MLP's weights."""
  E, G = spec.moe.num_experts, spec.moe.upcycling_granularity
  c = activation_scale(spec) ** (1 / 3)  # on each of gate, up, down (1 for G = 1, softmax after top-k)
  *lead, H, F = gate_LHF.shape
  Fe = F // G
  gate_LGHF = jnp.moveaxis((gate_LHF * c).reshape(*lead, H, G, Fe), -2, -3)
  up_LGHF = jnp.moveaxis((up_LHF * c).reshape(*lead, H, G, Fe), -2, -3)
  w1_LGH2F = jnp.stack([gate_LGHF, up_LGHF], axis=-1).reshape(*lead, G, H, 2 * Fe)
  w2_LGFH = (down_LFH * c).reshape(*lead, G, Fe, H)
  copies = lambda w: jnp.broadcast_to(w[..., None, :, :, :], (*lead, E // G, *w.shape[-3:])).reshape(
      *lead, E, *w.shape[-2:])
  return copies(w1_LGH2F).astype(gate_LHF.dtype), copies(w2_LGFH).astype(down_LFH.dtype)


def router_kernel(kernel_LHE, spec: ModelSpec):
  """The router's columns in virtual groups: column c of the first E/G repeated for the G slices of copy c."""
  G = spec.moe.upcycling_granularity
  return jnp.repeat(kernel_LHE[..., : spec.moe.num_experts // G], G, axis=-1)


def upcycle_layer(dense_layer: dict, moe_layer: dict, spec: ModelSpec) -> dict:
  """A MoE decoder layer's params: the dense layer's attention and norms, its MLP as experts, the
  MoE layer's (randomly initialised) router in virtual groups."""
  mlp = dense_layer["mlp"]
  w1, w2 = expert_weights(mlp["gate"], mlp["up"], mlp["down"], spec)
  moe = dict(moe_layer["moe"])
  moe["router"] = {**moe["router"], "kernel": router_kernel(moe["router"]["kernel"], spec)}
  moe["experts"] = {**moe["experts"], "w1": w1, "w2": w2}
  return {**{k: v for k, v in dense_layer.items() if k != "mlp"}, "moe": moe}
