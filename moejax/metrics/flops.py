"""Parameter counts, model FLOPs per token and MFU (REFERENCE.md §3).

FLOPs count matmuls only: attention projections and scores (causal, so half the
S×S products), dense MLPs, the router, the routed top-k experts (not all
experts), shared experts and the LM head; fwd+bwd = 3× forward.
"""
from __future__ import annotations

from typing import Iterator

import jax

from moejax.config import ModelSpec

# Dense BF16 tensor-core peak per device, TFLOP/s (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "B200": 2250.0, "A100": 312.0}


def _layer_params(spec: ModelSpec) -> Iterator[tuple[int, int, int]]:
  """Per layer: (attention matmul params, MLP or MoE params, those of them one token uses)."""
  H, D = spec.hidden_size, spec.head_dim
  a, moe = spec.attention, spec.moe
  attn = H * D * (2 * a.num_attention_heads + 2 * a.num_query_groups)
  for is_moe in spec.moe_pattern:
    if is_moe:
      E, K, F = moe.num_experts, moe.router.router_topk, spec.moe_ffn_hidden_size
      always = H * E                                   # router
      if moe.shared_expert_intermediate_size:
        always += 3 * H * moe.shared_expert_intermediate_size + (H if moe.shared_expert_gate else 0)
      yield attn, always + E * 3 * H * F, always + K * 3 * H * F
    else:
      yield attn, 3 * H * spec.ffn_hidden_size, 3 * H * spec.ffn_hidden_size


def num_params(spec: ModelSpec, active: bool = False) -> int:
  """Parameters of the model (checked against the built model in tests); with `active`, those
  one token uses (routed top-k experts instead of all)."""
  H, V = spec.hidden_size, spec.padded_vocab_size
  total = 2 * V * H + H                                # embedding, output head (padded rows), final norm
  for attn, mlp, mlp_active in _layer_params(spec):
    total += attn + 2 * H + (mlp_active if active else mlp)
  return total


def forward_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
  H, D, N = spec.hidden_size, spec.head_dim, spec.attention.num_attention_heads
  scores = 2 * 2 * N * D * seq_len * 0.5               # QK^T and PV, causal
  matmul = H * spec.padded_vocab_size + sum(attn + mlp_active for attn, _, mlp_active in _layer_params(spec))
  return float(2 * matmul + scores * spec.num_layers)


def train_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
  return 3.0 * forward_flops_per_token(spec, seq_len)


def peak_tflops_per_device(configured: float = 0.0) -> float | None:
  """The configured peak, else a known device's, else None (MFU not reported)."""
  if configured:
    return configured
  kind = jax.devices()[0].device_kind
  for name, peak in PEAK_TFLOPS.items():
    if name in kind:
      return peak
  return None
