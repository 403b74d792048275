"""Decoder blocks and the layer stack, scanned so compile time does not grow with depth.

`moe.layer_freq` may mix dense and MoE layers; `layer_segments` cuts the pattern
into runs of a repeating superblock (e.g. [dense]*3 then [moe]*58, or
[moe, dense]*16) and each run is one `nn.scan` (`model.scan_unroll` runs several repeats, or
with 0 all of them, per loop iteration; the params are stacked either way). With
`model.scan_layers=False` each layer is its own module `layer_{k}` with its own params, run in a
Python loop (MaxText's scan_layers=False).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.attention import Attention
from moejax.layers.dropout import hidden_dropout
from moejax.layers.memory import block_policy, remat_module, tag
from moejax.layers.mla import MLASelfAttention
from moejax.layers.mlp import MLP
from moejax.layers.norms import RMSNorm
from moejax.moe.layer import MoELayer
from moejax.moe.state import COLLECTIONS as MOE_COLLECTIONS


def layer_segments(pattern: tuple[bool, ...], max_period: int = 8) -> list[tuple[tuple[bool, ...], int]]:
  """Greedy cover of the layer pattern by (superblock kinds, repeats)."""
  out, i, L = [], 0, len(pattern)
  while i < L:
    best = (1, 1)  # (period, repeats)
    for p in range(1, min(max_period, L - i) + 1):
      unit, r = pattern[i:i + p], 1
      while pattern[i + r * p:i + (r + 1) * p] == unit:
        r += 1
      if r > 1 and r * p > best[0] * best[1]:  # a unit that does not repeat is no scan
        best = (p, r)
    p, r = best
    out.append((tuple(pattern[i:i + p]), r))
    i += p * r
  return out


def _layer_slots(pattern: tuple[bool, ...]):
  """(segment_i, block_j, repeat r, layer k) of every layer, in the scanned decoder's order."""
  start = 0
  for i, (kinds, repeats) in enumerate(layer_segments(pattern)):
    for r in range(repeats):
      for j in range(len(kinds)):
        yield f"segment_{i}", f"block_{j}", r, start + r * len(kinds) + j
    start += len(kinds) * repeats


def relayout(decoder: dict, pattern: tuple[bool, ...], scan_layers: bool,
             stack=lambda leaves: jnp.stack(leaves), take=lambda leaf, r: leaf[r]) -> dict:
  """A decoder subtree in the layout `scan_layers` asks for, from either: scanned segments
  (segment_i/block_j, leading axis = repeats) or one entry per layer (layer_k). Works for params
  and for collections only some layers have (moe_state: the MoE layers). `stack` and `take` act
  on the leaves: arrays by default; abstract shapes or shardings when restoring weights saved in
  the other layout (`load_as_run` in moejax/train/start.py)."""
  other = {k: v for k, v in decoder.items() if not k.startswith(("segment_", "layer_"))}
  if scan_layers:
    if not any(k.startswith("layer_") for k in decoder):
      return decoder
    groups: dict = {}
    for seg, blk, _, k in _layer_slots(pattern):
      if f"layer_{k}" in decoder:
        groups.setdefault(seg, {}).setdefault(blk, []).append(decoder[f"layer_{k}"])
    return {**other, **{seg: {blk: jax.tree.map(lambda *a: stack(a), *layers) for blk, layers in blocks.items()}
                        for seg, blocks in groups.items()}}
  if not any(k.startswith("segment_") for k in decoder):
    return decoder
  out = {}
  for seg, blk, r, k in _layer_slots(pattern):
    if blk in decoder.get(seg, {}):
      out[f"layer_{k}"] = jax.tree.map(lambda a: take(a, r), decoder[seg][blk])
  return {**other, **out}


def unstack_layers(decoder_params: dict, pattern: tuple[bool, ...]) -> list[dict]:
  """The params of each layer, in order, from either layout of `Decoder`'s params."""
  per_layer = relayout(decoder_params, pattern, scan_layers=False)
  return [per_layer[f"layer_{k}"] for k in range(len(pattern))]


def stack_layers(layers: list[dict], pattern: tuple[bool, ...], scan_layers: bool = True) -> dict:
  """The inverse of `unstack_layers`: {segment_i: {block_j: params with a leading repeats axis}},
  or {layer_k: params} when not `scan_layers`."""
  return relayout({f"layer_{k}": p for k, p in enumerate(layers)}, pattern, scan_layers)


SCANNED_COLLECTIONS = ("params",) + MOE_COLLECTIONS


class DecoderBlock(nn.Module):
  """Pre-norm block: x + attn(norm(x)), then + mlp_or_moe(norm(·)); activations named and
  submodules recomputed as `spec.recompute` says (moejax/layers/memory.py)."""
  spec: ModelSpec
  is_moe: bool

  @nn.compact
  def __call__(self, x_BSH, positions_BS, segments_BS=None):
    s = self.spec
    norm_cls = remat_module(s, "layernorm", RMSNorm)
    norm = lambda name: norm_cls(s.norm_epsilon, s.dtype, s.params_dtype, name=name)  # noqa: E731
    attention = MLASelfAttention if s.attention.mla.multi_latent_attention else Attention
    x_BSH = tag(x_BSH, "attn_norm")
    h_BSH = tag(norm("input_norm")(x_BSH), "qkv_linear")
    a_BSH = attention(s, name="attention")(h_BSH, positions_BS, segments_BS)
    x_BSH = tag(x_BSH + hidden_dropout(self, a_BSH, s.hidden_dropout), "mlp_norm")
    h_BSH = norm("pre_mlp_norm")(x_BSH)
    if self.is_moe:
      m_BSH, stats = remat_module(s, "moe", MoELayer)(s, name="moe")(h_BSH)
    else:
      m_BSH, stats = remat_module(s, "mlp", MLP)(s, s.ffn_hidden_size, name="mlp")(h_BSH), None
    x_BSH = nn.with_logical_constraint(x_BSH + hidden_dropout(self, m_BSH, s.hidden_dropout), ("batch", "seq", "embed"))
    return x_BSH, stats


def gather_layer_weights(params):
  """FSDP: one layer's weights, stored sharded over data (boxed with their logical axes by
  moejax.train.state.StatePlacement), gathered to their compute placement as the layer runs."""
  def gather(v):
    if not isinstance(v, nn.LogicallyPartitioned):
      return v
    return nn.with_logical_constraint(v.value, v.names)
  return jax.tree.map(gather, params, is_leaf=lambda v: isinstance(v, nn.LogicallyPartitioned))


class Superblock(nn.Module):
  """A short run of blocks with fixed kinds: the body of one scan."""
  spec: ModelSpec
  kinds: tuple[bool, ...]

  @nn.compact
  def __call__(self, x_BSH, positions_BS, segments_BS=None):
    stats = []
    for j, is_moe in enumerate(self.kinds):
      x_BSH, st = DecoderBlock(self.spec, is_moe, name=f"block_{j}")(x_BSH, positions_BS, segments_BS)
      if st is not None:
        stats.append(st)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *stats) if stats else None
    return x_BSH, stacked


class Decoder(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BSH, positions_BS, segments_BS=None):
    s = self.spec
    block_cls = Superblock if s.scan_layers else DecoderBlock
    if s.sharding.fsdp and not self.is_initializing():
      block_cls = nn.map_variables(block_cls, "params", trans_in_fn=gather_layer_weights)
    # in a scan XLA cannot merge the recomputation with the forward pass; in a Python loop it could
    prevent_cse = not s.scan_layers
    if s.recompute.recompute_granularity == "full":
      block_cls = nn.remat(block_cls, prevent_cse=prevent_cse)
    elif block_policy(s) is not None:
      block_cls = nn.remat(block_cls, prevent_cse=prevent_cse, policy=block_policy(s))
    moe_stats = []
    if not s.scan_layers:
      for k, is_moe in enumerate(s.moe_pattern):
        x_BSH, st = block_cls(s, is_moe, name=f"layer_{k}")(x_BSH, positions_BS, segments_BS)
        if st is not None:
          moe_stats.append(jax.tree.map(lambda a: a[None], st))
    for i, (kinds, repeats) in enumerate(layer_segments(s.moe_pattern) if s.scan_layers else ()):
      # moe_state: expert bias and step counters; routing_replay/record: router replay ids.
      scanned = nn.scan(block_cls, variable_axes={c: 0 for c in SCANNED_COLLECTIONS},
                        split_rngs={"params": True, "router": True, "dropout": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=repeats,
                        unroll=s.scan_unroll or repeats,  # 0: every repeat unrolled (no loop)
                        metadata_params={nn.PARTITION_NAME: "layers"})
      x_BSH, st = scanned(s, kinds, name=f"segment_{i}")(x_BSH, positions_BS, segments_BS)
      if st is not None:  # [repeats, moe layers per superblock, ...] -> [layers, ...]
        moe_stats.append(jax.tree.map(lambda a: a.reshape(-1, *a.shape[2:]), st))
    stats = jax.tree.map(lambda *a: jnp.concatenate(a), *moe_stats) if moe_stats else None
    x_BSH = RMSNorm(s.norm_epsilon, s.dtype, s.params_dtype, name="final_norm")(x_BSH)
    return x_BSH, stats
