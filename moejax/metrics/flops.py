"""Model FLOPs per token and MFU (REFERENCE.md §3).

Counts matmuls only: attention projections and scores (causal, so half the
S×S products), dense MLPs, the router, the routed top-k experts (not all
experts), shared experts and the LM head; fwd+bwd = 3× forward.
"""
from __future__ import annotations

import jax

from moejax.config import ModelSpec

# Dense BF16 tensor-core peak per device, TFLOP/s (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "B200": 2250.0, "A100": 312.0}


def forward_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
  H, D = spec.hidden_size, spec.head_dim
  N, K = spec.num_attention_heads, spec.num_query_groups
  attn = 2 * H * D * (2 * N + 2 * K) + 2 * 2 * N * D * seq_len * 0.5
  total = 2 * H * spec.vocab_size
  pattern = spec.moe_pattern or (False,) * spec.num_layers
  for is_moe in pattern:
    total += attn
    if is_moe:
      total += 2 * H * spec.num_experts + spec.router_topk * 2 * 3 * H * spec.moe_ffn_hidden_size
      if spec.shared_expert_intermediate_size:
        total += 2 * 3 * H * spec.shared_expert_intermediate_size
    else:
      total += 2 * 3 * H * spec.ffn_hidden_size
  return float(total)


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
