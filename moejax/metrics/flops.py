"""Parameter counts, model FLOPs per token and MFU (REFERENCE.md §3).

FLOPs count matmuls only: attention projections (GQA or MLA) and scores (causal, so half
the S×S products), dense MLPs, the router, the routed top-k experts (not all experts), shared
experts, the LM head and the MTP depths (their projection, block and head); fwd+bwd = 3× forward.
"""
from __future__ import annotations

from typing import Iterator

import jax

from moejax.config import ModelSpec

# Dense BF16 tensor-core peak per device, TFLOP/s (no sparsity).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "B200": 2250.0, "A100": 312.0}


def _attention_params(spec: ModelSpec) -> tuple[int, int]:
  """(matmul weights, other parameters: biases and norms) of one attention layer."""
  a, H, N = spec.attention, spec.hidden_size, spec.attention.num_attention_heads
  if a.mla.multi_latent_attention:
    m = a.mla
    qk, R = m.qk_head_dim + m.qk_pos_emb_head_dim, m.kv_lora_rank
    kv_down = R + m.qk_pos_emb_head_dim
    if m.q_lora_rank is None:
      matmul, other = H * N * qk, 0
    else:
      matmul = H * m.q_lora_rank + m.q_lora_rank * N * qk
      other = m.q_lora_rank * (a.add_qkv_bias + a.qk_layernorm)
    matmul += H * kv_down + R * N * (m.qk_head_dim + m.v_head_dim) + N * m.v_head_dim * H
    other += kv_down * a.add_qkv_bias + R * a.qk_layernorm + H * a.attention_output_bias
    return matmul, other
  D, K = spec.head_dim, a.num_query_groups
  other = (N + 2 * K) * D * a.add_qkv_bias + 2 * D * a.qk_layernorm + H * a.attention_output_bias
  return H * D * (2 * N + 2 * K), other


def _mlp_params(spec: ModelSpec, is_moe: bool) -> tuple[int, int]:
  """(parameters, those one token uses) of one layer's MLP or MoE block."""
  H, moe = spec.hidden_size, spec.moe
  if not is_moe:
    return 3 * H * spec.ffn_hidden_size, 3 * H * spec.ffn_hidden_size
  E, K, F = moe.num_experts, moe.router.router_topk, spec.moe_ffn_hidden_size
  always = H * E                                       # router
  if moe.shared_expert_intermediate_size:
    always += 3 * H * moe.shared_expert_intermediate_size + (H if moe.shared_expert_gate else 0)
  return always + E * 3 * H * F, always + K * 3 * H * F


def _layers(spec: ModelSpec) -> Iterator[tuple[int, int, int, int]]:
  """Per decoder layer, then per MTP depth: (attention matmul params, other attention params,
  MLP or MoE params, those of them one token uses). MTP depths take the last layer's kind and
  count their input projection [2H, H] as attention matmul weights."""
  attn, attn_other = _attention_params(spec)
  for is_moe in spec.moe_pattern:
    yield (attn, attn_other, *_mlp_params(spec, is_moe))
  H = spec.hidden_size
  for _ in range(spec.mtp_num_layers):
    yield (attn + 2 * H * H, attn_other, *_mlp_params(spec, spec.moe_pattern[-1]))


def num_params(spec: ModelSpec, active: bool = False, mtp: bool = True) -> int:
  """Parameters of the model (checked against the built model in tests); with `active`, those
  one token uses (routed top-k experts instead of all); without `mtp`, the MTP depths left out
  (published totals such as DeepSeek-V3's 671B exclude them)."""
  H, V = spec.hidden_size, spec.padded_vocab_size
  total = V * H * (1 + spec.untie_embeddings_and_output_weights) + H  # embedding, head (padded rows), final norm
  layers = list(_layers(spec))
  if not mtp:
    layers = layers[:spec.num_layers]
  for attn, attn_other, mlp, mlp_active in layers:
    total += attn + attn_other + 2 * H + (mlp_active if active else mlp)
  return total + (len(layers) - spec.num_layers) * 3 * H  # each MTP depth's enorm, hnorm, final norm


def describe_params(spec: ModelSpec) -> str:
  """`model 46,702.8M parameters, 12,879.9M active per token` (+ the MTP layers apart, as published
  totals leave them out)."""
  total, active = num_params(spec, mtp=False), num_params(spec, active=True, mtp=False)
  line = f"model {total / 1e6:,.1f}M parameters, {active / 1e6:,.1f}M active per token"
  if spec.mtp_num_layers:
    line += f" (+{(num_params(spec) - total) / 1e6:,.1f}M in {spec.mtp_num_layers} MTP layer(s))"
  return line


def forward_flops_per_token(spec: ModelSpec, seq_len: int) -> float:
  """Forward matmul FLOPs per token: 2·(weights a token uses) + causal attention scores, per layer
  and per MTP depth (each with its own pass through the LM head)."""
  N = spec.attention.num_attention_heads
  scores = 2 * N * (spec.qk_dim + spec.v_dim) * seq_len * 0.5  # QK^T and PV, causal
  head = spec.hidden_size * spec.padded_vocab_size * (1 + spec.mtp_num_layers)
  layers = list(_layers(spec))
  matmul = head + sum(attn + mlp_active for attn, _, _, mlp_active in layers)
  return float(2 * matmul + scores * len(layers))


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
