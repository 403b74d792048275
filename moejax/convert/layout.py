"""Where each moejax parameter comes from in a Hugging Face checkpoint, both ways, one block at a time.

A moejax leaf of the scanned decoder is [repeats, ...] (experts: [repeats, E, ...]); a block is
one layer's slice (one expert's for experts). With `model.scan_layers=False` a leaf is one
layer's (decoder/layer_k) and a block the whole leaf or one expert's slice. A `Rule` turns the HF
tensors of one block into the block and back, bit for bit: transposes, head splits, gate/up
interleaving of w1 (see moejax/moe/experts.py), DeepSeek's interleaved rotary pairs de-interleaved
into the rotate-half layout (moejax/layers/rotary.py), and vocabulary rows padded with zeros (cut
on the way back).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import numpy as np

from moejax.config import ModelSpec
from moejax.convert.families import Family
from moejax.models.decoder import layer_segments


@dataclasses.dataclass(frozen=True)
class Rule:
  hf: tuple[str, ...]                           # HF tensor names ("{e}": the expert)
  to_block: Callable[..., np.ndarray]           # HF tensors -> block
  from_block: Callable[[np.ndarray], tuple]     # block -> HF tensors
  hf_shapes: Callable[[tuple], tuple]           # block shape -> the HF tensors' shapes (checked before reading)
  per_expert: bool = False


def _size(shape) -> int:
  return int(np.prod(shape))


def _ident(name: str) -> Rule:
  return Rule((name,), lambda w: w, lambda b: (b,), lambda s: (s,))


def _in(name: str, out_shape=(), perm=None) -> Rule:
  """HF Linear weight [out, in] -> ours [in, *out_shape], the last axis permuted by `perm`."""
  inv = None if perm is None else np.argsort(perm)

  def to_block(w):
    b = w.T.reshape(w.shape[1], *(out_shape or (w.shape[0],)))
    return b if perm is None else b[..., perm]

  def from_block(b):
    b = b if inv is None else b[..., inv]
    return (b.reshape(b.shape[0], -1).T,)

  return Rule((name,), to_block, from_block, lambda s: ((_size(s[1:]), s[0]),))


def _out(name: str, in_shape) -> Rule:
  """HF Linear weight [out, *in_shape flattened] -> ours [*in_shape, out]."""
  return Rule((name,), lambda w: w.T.reshape(*in_shape, w.shape[0]), lambda b: (b.reshape(-1, b.shape[-1]).T,),
              lambda s: ((s[-1], _size(s[:-1])),))


def _vector(name: str, shape=None, perm=None) -> Rule:
  """A bias or norm scale, reshaped to `shape` and/or with its last axis permuted."""
  inv = None if perm is None else np.argsort(perm)

  def to_block(w):
    w = w if perm is None else w[..., perm]
    return w if shape is None else w.reshape(shape)

  return Rule((name,), to_block, lambda b: ((b if inv is None else b[..., inv]).reshape(-1),), lambda s: ((_size(s),),))


def _swiglu(gate: str, up: str) -> Rule:
  """Expert gate [F, H] and up [F, H] -> w1 [H, 2F], (f, 0) gate and (f, 1) up."""
  return Rule((gate, up), lambda g, u: np.stack([g.T, u.T], axis=-1).reshape(g.shape[1], -1),
              lambda b: tuple(np.ascontiguousarray(b.reshape(b.shape[0], -1, 2)[..., i].T) for i in (0, 1)),
              lambda s: ((s[1] // 2, s[0]),) * 2, per_expert=True)


def _rope_perm(spec: ModelSpec, interleaved: bool, width: int | None = None):
  """Index map from an interleaved rotary slice (x0 x1, x2 x3, ...) at the end of a `width`-wide
  axis to the rotate-half layout (even dims first); None when the checkpoint is not interleaved."""
  if not interleaved:
    return None
  Dr = spec.attention.mla.qk_pos_emb_head_dim
  width = width or spec.qk_dim
  half = np.concatenate([np.arange(0, Dr, 2), np.arange(1, Dr, 2)])
  return np.concatenate([np.arange(width - Dr), width - Dr + half])


def layer_rules(f: Family, spec: ModelSpec, is_moe: bool, interleaved: bool) -> dict[tuple[str, ...], Rule]:
  """Rules of one decoder layer, keyed by the moejax path inside a block; HF names relative to
  `model.layers.{l}.`."""
  a, H, N = spec.attention, spec.hidden_size, spec.attention.num_attention_heads
  rules = {("input_norm", "scale"): _ident("input_layernorm.weight"),
           ("pre_mlp_norm", "scale"): _ident("post_attention_layernorm.weight")}
  att = lambda *p: ("attention", *p)  # noqa: E731
  if a.mla.multi_latent_attention:
    m = a.mla
    qk, Dn, Dr = spec.qk_dim, m.qk_head_dim, m.qk_pos_emb_head_dim
    perm_q = _rope_perm(spec, interleaved)
    if m.q_lora_rank is None:
      rules[att("q")] = _in("self_attn.q_proj.weight", (N, qk), perm_q)
    else:
      rules[att("q_down")] = _in("self_attn.q_a_proj.weight")
      rules[att("q_up")] = _in("self_attn.q_b_proj.weight", (N, qk), perm_q)
      if a.qk_layernorm:
        rules[att("q_norm", "scale")] = _ident("self_attn.q_a_layernorm.weight")
      if a.add_qkv_bias:
        rules[att("q_down_bias")] = _ident("self_attn.q_a_proj.bias")
    perm_kv = _rope_perm(spec, interleaved, m.kv_lora_rank + Dr)
    rules[att("kv_down")] = _in("self_attn.kv_a_proj_with_mqa.weight", (), perm_kv)
    if a.add_qkv_bias:
      rules[att("kv_down_bias")] = _vector("self_attn.kv_a_proj_with_mqa.bias", perm=perm_kv)
    if a.qk_layernorm:
      rules[att("kv_norm", "scale")] = _ident("self_attn.kv_a_layernorm.weight")
    rules[att("kv_up")] = _in("self_attn.kv_b_proj.weight", (N, Dn + m.v_head_dim))
    rules[att("o")] = _out("self_attn.o_proj.weight", (N, m.v_head_dim))
  else:
    D, K = spec.head_dim, a.num_query_groups
    for p, heads in (("q", N), ("k", K), ("v", K)):
      rules[att(p)] = _in(f"self_attn.{p}_proj.weight", (heads, D))
      if a.add_qkv_bias:
        rules[att(f"{p}_bias")] = _vector(f"self_attn.{p}_proj.bias", (heads, D))
    rules[att("o")] = _out("self_attn.o_proj.weight", (N, D))
    if a.qk_layernorm:
      rules[att("q_norm", "scale")] = _ident("self_attn.q_norm.weight")
      rules[att("k_norm", "scale")] = _ident("self_attn.k_norm.weight")
  if a.attention_output_bias:
    rules[att("o_bias")] = _ident("self_attn.o_proj.bias")
  if not is_moe:
    for p in ("gate", "up"):
      rules[("mlp", p)] = _in(f"mlp.{p}_proj.weight")
    rules[("mlp", "down")] = _in("mlp.down_proj.weight")
    return rules
  gate, up, down = (f"{f.moe_prefix}.experts.{{e}}.{n}.weight" for n in f.experts)
  rules[("moe", "router", "kernel")] = _in(f"{f.moe_prefix}.gate.weight")
  rules[("moe", "experts", "w1")] = _swiglu(gate, up)
  rules[("moe", "experts", "w2")] = dataclasses.replace(_in(down), per_expert=True)
  if spec.moe.shared_expert_intermediate_size:
    for p in ("gate", "up", "down"):
      rules[("moe", "shared_experts", p)] = _in(f"{f.moe_prefix}.{f.shared}.{p}_proj.weight")
    if spec.moe.shared_expert_gate:
      rules[("moe", "shared_experts", "gate_weight")] = _in(f"{f.moe_prefix}.shared_expert_gate.weight")
  return rules


MTP_RULES = {("enorm", "scale"): _ident("enorm.weight"), ("hnorm", "scale"): _ident("hnorm.weight"),
             ("final_norm", "scale"): _ident("shared_head.norm.weight"), ("eh_proj",): _in("eh_proj.weight")}
EXPERT_BIAS = "{prefix}.gate.e_score_correction_bias"


def _padded_rows(name: str, spec: ModelSpec, transpose: bool) -> Rule:
  """[V, H] HF rows -> ours padded to the padded vocabulary with zeros (transposed: the head)."""
  pad = spec.padded_vocab_size - spec.vocab_size

  def to_block(w):
    w = np.pad(w, ((0, pad), (0, 0)))
    return np.ascontiguousarray(w.T) if transpose else w

  return Rule((name,), to_block, lambda b: (np.ascontiguousarray((b.T if transpose else b)[:spec.vocab_size]),),
              lambda s: ((spec.vocab_size, s[0] if transpose else s[1]),))


@dataclasses.dataclass(frozen=True)
class Block:
  index: tuple[slice, ...]       # into the moejax leaf
  hf: tuple[str, ...]            # full HF names
  rule: Rule

  def shape(self, leaf_shape) -> tuple[int, ...]:
    """The block's shape without the leading layer/expert axes it indexes."""
    return tuple(leaf_shape[sum(1 for s in self.index if s != slice(None)):])


def _stacked(rule: Rule, prefix: str, layers: list[int], num_experts: int) -> Iterator[Block]:
  for r, l in enumerate(layers):
    if not rule.per_expert:
      yield Block((slice(r, r + 1),), tuple(prefix.format(l=l) + n for n in rule.hf), rule)
      continue
    for e in range(num_experts):
      yield Block((slice(r, r + 1), slice(e, e + 1)), tuple(prefix.format(l=l) + n.format(e=e) for n in rule.hf), rule)


def _one_layer(rule: Rule, prefix: str, layer: int, num_experts: int) -> list[Block]:
  """The blocks of a leaf that holds one layer (no leading repeats axis)."""
  return [Block(b.index[1:] or (slice(None),), b.hf, rule) for b in _stacked(rule, prefix, [layer], num_experts)]


def decoder_layers(spec: ModelSpec) -> dict[tuple[int, int], list[int]]:
  """{(segment, block): the layer index of each repeat} of the scanned decoder."""
  out, start = {}, 0
  for i, (kinds, repeats) in enumerate(layer_segments(spec.moe_pattern)):
    for j in range(len(kinds)):
      out[(i, j)] = [start + r * len(kinds) + j for r in range(repeats)]
    start += len(kinds) * repeats
  return out


def leaf_blocks(f: Family, spec: ModelSpec, path: tuple[str, ...], interleaved: bool) -> list[Block]:
  """The blocks of the moejax parameter at `path` (its key path in the params tree)."""
  prefix = "model.layers.{l}."
  E = spec.moe.num_experts or 0
  whole = (slice(None),)
  if path == ("embedding", "embedding"):
    return [Block(whole, ("model.embed_tokens.weight",), _padded_rows("model.embed_tokens.weight", spec, False))]
  if path == ("output_layer", "kernel"):
    return [Block(whole, ("lm_head.weight",), _padded_rows("lm_head.weight", spec, True))]
  if path == ("decoder", "final_norm", "scale"):
    return [Block(whole, ("model.norm.weight",), _ident("model.norm.weight"))]
  if path[0] == "decoder" and path[1].startswith("layer_"):
    l = int(path[1].removeprefix("layer_"))
    return _one_layer(layer_rules(f, spec, spec.moe_pattern[l], interleaved)[path[2:]], prefix, l, E)
  if path[0] == "decoder":
    i, j = int(path[1].removeprefix("segment_")), int(path[2].removeprefix("block_"))
    layers = decoder_layers(spec)[(i, j)]
    rule = layer_rules(f, spec, spec.moe_pattern[layers[0]], interleaved)[path[3:]]
    return list(_stacked(rule, prefix, layers, E))
  if path[0].startswith("mtp_"):
    l = spec.num_layers + int(path[0].removeprefix("mtp_"))
    if path[1] == "block":
      return _one_layer(layer_rules(f, spec, spec.moe_pattern[-1], interleaved)[path[2:]], prefix, l, E)
    rule = MTP_RULES[path[1:]]
    return [Block(whole, (prefix.format(l=l) + rule.hf[0],), rule)]
  raise KeyError(path)


def expert_bias_layers(spec: ModelSpec) -> dict[tuple[str, ...], list[int]]:
  """moe_state paths of the routers with an expert bias → their layer per repeat."""
  out = {}
  if not spec.scan_layers:
    for l in (l for l, is_moe in enumerate(spec.moe_pattern) if is_moe):
      out[("decoder", f"layer_{l}", "moe", "router", "expert_bias")] = [l]
  for (i, j), layers in decoder_layers(spec).items() if spec.scan_layers else ():
    if spec.moe_pattern[layers[0]]:
      out[("decoder", f"segment_{i}", f"block_{j}", "moe", "router", "expert_bias")] = layers
  for k in range(spec.mtp_num_layers if spec.moe_pattern[-1] else 0):
    out[(f"mtp_{k}", "block", "moe", "router", "expert_bias")] = [spec.num_layers + k]
  return out
