"""Hugging Face safetensors ↔ moejax Orbax checkpoints, streamed one tensor at a time.

hf-to-moejax writes DIR/params (Orbax, the tensors' own dtype), DIR/moe_state when the routers
carry an expert bias (DeepSeek-V3's e_score_correction_bias), DIR/moejax_config.json (the model
and moe sections: `--config` can be omitted for DIR) and DIR/hf_config.json (the original, for
the fields moejax does not model). moejax-to-hf writes safetensors shards, their index and a
config.json. Host memory stays near one block (a layer's tensor, an expert's) plus one output
shard: moejax/checkpoint/streaming.py.
"""
from __future__ import annotations

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from moejax.checkpoint.manager import MOE_STATE_ITEM, PARAMS_ITEM, save_moe_state
from moejax.checkpoint.streaming import LeafReader, StreamedArray, save_streamed
from moejax.config import ModelSpec, apply_overrides, base_config, model_spec
from moejax.config import problems as config_problems
from moejax.convert import families
from moejax.convert.families import Family
from moejax.convert.hf_io import ConversionError, HFCheckpoint, read_json, write_sharded
from moejax.convert.layout import EXPERT_BIAS, Block, expert_bias_layers, leaf_blocks
from moejax.models.gpt import GPTModel
from moejax.moe.state import MOE_STATE, ExpertBias

MOEJAX_CONFIG = "moejax_config.json"
HF_CONFIG = "hf_config.json"
CHECKPOINT_SECTIONS = ("model", "moe")  # what a converted checkpoint's config fixes; the rest stays a recipe's


# ------------------------------------------------------------------------------ configs
def config_from_keys(keys: dict):
  """base_config() with the given flat keys, checked: ConversionError on the first problem."""
  cfg = base_config()
  apply_overrides(cfg, keys)
  bad = config_problems(cfg)
  if bad:
    raise ConversionError(f"the converted config is invalid: {bad[0]}")
  return cfg


def load_checkpoint_config(directory: str):
  """The config saved next to converted weights (DIR/moejax_config.json), over base_config()."""
  path = os.path.join(directory, MOEJAX_CONFIG)
  if not os.path.exists(path):
    raise ConversionError(f"{directory} has no {MOEJAX_CONFIG}: pass --config RECIPE for these weights")
  saved = read_json(path)
  return config_from_keys({f"{sec}.{k}": v for sec, values in saved.items() for k, v in values.items()})


def _write_config(directory: str, cfg) -> None:
  with open(os.path.join(directory, MOEJAX_CONFIG), "w") as f:
    json.dump({sec: cfg[sec].to_dict() for sec in CHECKPOINT_SECTIONS}, f, indent=2)


def _abstract(spec: ModelSpec):
  """(abstract params, abstract moe_state) of the model, nothing allocated."""
  variables = jax.eval_shape(GPTModel(spec).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), jnp.int32))
  return nn.unbox(variables["params"]), variables.get(MOE_STATE, {})


def _leaves(tree, is_leaf=None):
  """[(key path as strings, leaf)] of a nested dict."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [(tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path), leaf) for path, leaf in flat]


def _set(tree: dict, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _interleaved(f: Family, hf_config: dict | None) -> bool:
  """Whether the checkpoint stores DeepSeek's rotary dims as interleaved pairs."""
  if f.name == "deepseek_v2":
    return True  # transformers' DeepseekV2 rotates (x0, x1), (x2, x3), ... as complex pairs
  return f.name == "deepseek_v3" and (hf_config or {}).get("rope_interleave", True)


# ------------------------------------------------------------------------------ HF -> moejax
def _mtp_layers_present(f: Family, raw: dict, ckpt: HFCheckpoint) -> int:
  if not f.mtp:
    return 0
  L = raw.get("num_hidden_layers", f.defaults["num_hidden_layers"])
  n = 0
  while f"model.layers.{L + n}.eh_proj.weight" in ckpt:
    n += 1
  return n


def _streamed(leaf, blocks: list[Block], ckpt: HFCheckpoint, name: str) -> StreamedArray:
  """The leaf as blocks read from the checkpoint when written; shapes and dtypes checked first."""
  dtypes = {ckpt.dtype(n) for b in blocks for n in b.hf}
  if len(dtypes) != 1:
    raise ConversionError(f"{blocks[0].hf[0]} and the other tensors of {name} differ in dtype: {sorted(map(str, dtypes))}")
  want = blocks[0].rule.hf_shapes(blocks[0].shape(leaf.shape))
  for b in blocks:
    for n, shape in zip(b.hf, want):
      if ckpt.shape(n) != tuple(shape):
        raise ConversionError(f"{n} has shape {list(ckpt.shape(n))}, config.json implies {list(shape)} (moejax {name})")
  lead = len(leaf.shape) - len(blocks[0].shape(leaf.shape))
  return StreamedArray(tuple(leaf.shape), dtypes.pop(), (1,) * lead + blocks[0].shape(leaf.shape),
                       lambda: ((b.index, b.rule.to_block(*(ckpt.get(n) for n in b.hf))) for b in blocks))


def hf_to_moejax(family_name: str, hf_dir: str, out_dir: str, log=sys.stderr, scan_layers: bool = True) -> None:
  """HF_DIR's weights as a moejax weights-only checkpoint in OUT_DIR; `scan_layers=False` writes each
  decoder layer's params on their own, for runs with model.scan_layers=False."""
  f = families.family(family_name)
  config_path = os.path.join(hf_dir, "config.json")
  if not os.path.exists(config_path):
    raise ConversionError(f"--hf {hf_dir}: no config.json")
  raw = read_json(config_path)
  ckpt = HFCheckpoint(hf_dir)
  cfg = config_from_keys(families.to_moejax(f, raw, _mtp_layers_present(f, raw, ckpt)))
  cfg.model.scan_layers = scan_layers
  spec = model_spec(cfg)
  params, moe_state = _abstract(spec)
  interleaved = _interleaved(f, raw)
  tree, used = {}, set()
  for path, leaf in _leaves(params):
    blocks = leaf_blocks(f, spec, path, interleaved)
    for b in blocks:
      for n in b.hf:
        if n not in ckpt:
          raise ConversionError(f"missing tensor {n} (needed by moejax {'.'.join(path)}): config.json and weights disagree")
        used.add(n)
    _set(tree, path, _streamed(leaf, blocks, ckpt, ".".join(path)))
  bias_tree = _expert_biases(f, spec, moe_state, ckpt, used)
  _check_all_used(f, spec, ckpt, used)
  os.makedirs(out_dir, exist_ok=True)
  save_streamed(out_dir, tree)
  if bias_tree:
    save_moe_state(out_dir, bias_tree)
  _write_config(out_dir, cfg)
  with open(os.path.join(out_dir, HF_CONFIG), "w") as fh:
    json.dump(raw, fh, indent=2)
  print(f"converted {len(used)} tensors of {f.name} ({spec.num_layers} layers"
        f"{f', {spec.mtp_num_layers} MTP' if spec.mtp_num_layers else ''}) into {out_dir}/{PARAMS_ITEM}"
        f"{' and ' + MOE_STATE_ITEM if bias_tree else ''}; config {out_dir}/{MOEJAX_CONFIG}", file=log)


def _expert_biases(f: Family, spec: ModelSpec, moe_state, ckpt: HFCheckpoint, used: set) -> dict:
  """moe_state with each router's expert bias from e_score_correction_bias (small: held whole)."""
  if not spec.moe.router.router_enable_expert_bias:
    return {}
  layers = expert_bias_layers(spec)
  out = {}
  for path, state in _leaves(moe_state, is_leaf=lambda x: isinstance(x, ExpertBias)):
    if not isinstance(state, ExpertBias):
      continue
    names = [EXPERT_BIAS.format(prefix=f"model.layers.{l}.{f.moe_prefix}") for l in layers[path]]
    missing = [n for n in names if n not in ckpt]
    if missing:
      raise ConversionError(f"missing tensor {missing[0]} (the router's expert bias)")
    used.update(names)
    bias = np.stack([ckpt.get(n).astype(np.float32) for n in names]).reshape(state.expert_bias.shape)
    _set(out, path, ExpertBias(bias, np.zeros(state.local_tokens_per_expert.shape, np.float32)))
  return out


def _check_all_used(f: Family, spec: ModelSpec, ckpt: HFCheckpoint, used: set) -> None:
  """Every checkpoint tensor went somewhere, except copies moejax shares (an MTP layer's embedding
  and head, checked equal) and those transformers also ignores."""
  L = spec.num_layers + spec.mtp_num_layers
  skipped = []
  for name in ckpt.files:
    if name in used or name.endswith("rotary_emb.inv_freq"):
      continue
    m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
    if m and int(m.group(1)) >= L and f.mtp:
      skipped.append(name)  # MTP layers beyond model.mtp_num_layers: transformers ignores them too
      continue
    if m and m.group(2) in ("embed_tokens.weight", "shared_head.head.weight") and int(m.group(1)) >= spec.num_layers:
      tied = m.group(2) == "embed_tokens.weight" or not spec.untie_embeddings_and_output_weights
      main = "model.embed_tokens.weight" if tied else "lm_head.weight"
      if main not in ckpt or not np.array_equal(ckpt.get(name), ckpt.get(main)):
        raise ConversionError(f"{name} differs from {main}: moejax's MTP layers share the model's embedding and head")
      continue
    if name == "lm_head.weight" and not spec.untie_embeddings_and_output_weights:
      continue  # tied: the head is the embedding
    if f.shared and ".shared_expert" in name and not spec.moe.shared_expert_intermediate_size:
      continue  # a zero-width shared expert (shared_expert_intermediate_size=0) adds nothing
    raise ConversionError(f"unexpected tensor {name} in the checkpoint: config.json and weights disagree")


# ------------------------------------------------------------------------------ moejax -> HF
def _layer_key(name: str):
  """HF's order: embedding, layers (experts in numeric order), final norm, head."""
  m = re.match(r"model\.layers\.(\d+)\.(.*)", name)
  if m:
    parts = tuple(int(p) if p.isdigit() else p for p in m.group(2).split("."))
    return (1, int(m.group(1)), tuple((isinstance(p, int), p) for p in parts))
  return ({"model.embed_tokens.weight": 0, "model.norm.weight": 2}.get(name, 3), 0, name)


def _sources(params_dir: str):
  """(weights reader, key prefix, router-state reader or None, its prefix): a weights-only
  checkpoint (DIR/params, DIR/moe_state) or one step of a training run (DIR/state)."""
  if os.path.isdir(os.path.join(params_dir, PARAMS_ITEM)):
    state = MOE_STATE_ITEM if os.path.isdir(os.path.join(params_dir, MOE_STATE_ITEM)) else None
    return LeafReader(params_dir), (), state and LeafReader(params_dir, state), ()
  if os.path.isdir(os.path.join(params_dir, "state")):
    reader = LeafReader(params_dir, "state")
    return reader, ("params",), reader if "moe_state" in reader.tree else None, ("moe_state",)
  raise ConversionError(f"--params {params_dir}: neither a weights-only checkpoint ({PARAMS_ITEM}/) nor a training "
                        "checkpoint step (RUN/checkpoints/STEP with state/)")


def moejax_to_hf(params_dir: str, out_dir: str, family_name: str | None = None, cfg=None, dtype: str | None = None,
                 max_shard_bytes: int = 5 * 2**30, log=sys.stderr) -> None:
  """Writes the weights of `params_dir` (converted, saved by save_params, or a training step)
  as an HF checkpoint of `family_name` (default: the original config's family)."""
  base_path = os.path.join(params_dir, HF_CONFIG)
  base = read_json(base_path) if os.path.exists(base_path) else None
  if family_name is None:
    if base is None:
      raise ConversionError(f"{params_dir} has no {HF_CONFIG}: pass --family")
    family_name = next((n for n, fam in families.FAMILIES.items() if fam.model_type == base.get("model_type")), None)
    if family_name is None:
      raise ConversionError(f"{base_path}: model_type={base.get('model_type')!r} is not a supported family")
  f = families.family(family_name)
  cfg = load_checkpoint_config(params_dir) if cfg is None else cfg
  spec = model_spec(cfg)
  params, _ = _abstract(spec)
  reader, prefix, state_reader, state_prefix = _sources(params_dir)
  out_dtype = None if dtype is None else np.dtype(jnp.dtype(dtype))
  interleaved = _interleaved(f, base)
  tensors, sizes = [], {}
  for path, leaf in _leaves(params):
    name = ".".join(prefix + path)
    meta = _find(reader.tree, prefix + path)
    if meta is None or tuple(meta.shape) != tuple(leaf.shape):
      raise ConversionError(f"{params_dir} has no {name} of shape {list(leaf.shape)}: the config does not match "
                            "these weights")
    saved = np.dtype(meta.dtype)
    sizes[saved] = sizes.get(saved, 0) + leaf.size
    blocks = leaf_blocks(f, spec, path, interleaved)
    shapes = blocks[0].rule.hf_shapes(blocks[0].shape(leaf.shape))
    cache = {}
    for b in blocks:
      for pos, hf_name in enumerate(b.hf):
        tensors.append((hf_name, shapes[pos], out_dtype or saved, _producer(reader, name, b, pos, cache, out_dtype)))
  config = families.to_hf(f, spec, base, (out_dtype or max(sizes, key=sizes.get)).name)  # refuses before writing
  tensors += _bias_tensors(f, spec, state_reader, state_prefix)
  tensors += _shared_mtp_copies(spec, tensors) + _zero_width_shared(f, spec, tensors[0][2])
  tensors.sort(key=lambda t: _layer_key(t[0]))
  write_sharded(out_dir, tensors, max_shard_bytes)
  with open(os.path.join(out_dir, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  print(f"wrote {len(tensors)} tensors of {f.name} into {out_dir}", file=log)


def _find(tree, path):
  for k in path:
    if not isinstance(tree, dict) or k not in tree:
      return None
    tree = tree[k]
  return tree


def _producer(reader: LeafReader, leaf: str, b: Block, pos: int, cache: dict, dtype):
  """Reads the block once for all the HF tensors it yields (w1: gate and up)."""
  def produce():
    key = tuple((s.start, s.stop) for s in b.index)
    if cache.get("key") != key:
      block = reader.read(leaf, b.index)
      cache.update(key=key, out=b.rule.from_block(block.reshape(b.shape(block.shape))))
    out = cache["out"][pos]
    return out if dtype is None else out.astype(dtype)
  return produce


def _bias_tensors(f: Family, spec: ModelSpec, reader: LeafReader | None, prefix: tuple) -> list:
  """DeepSeek-V3's (and GLM-4.5's) e_score_correction_bias per MoE layer: from the router state, else zeros."""
  if not f.v3_router or not spec.moe.num_experts:
    return []
  E, out = spec.moe.num_experts, []
  for path, layers in expert_bias_layers(spec).items():
    key = prefix + path + ("expert_bias",)
    have = reader is not None and _find(reader.tree, key) is not None
    for r, l in enumerate(layers):
      def produce(r=r, name=".".join(key), have=have, stacked=path[1].startswith("segment_")):
        if not have:
          return np.zeros((E,), np.float32)
        return reader.read(name, (r,) if stacked else ()).astype(np.float32)
      out.append((EXPERT_BIAS.format(prefix=f"model.layers.{l}.{f.moe_prefix}"), (E,), np.dtype(np.float32), produce))
  return out


def _zero_width_shared(f: Family, spec: ModelSpec, dtype) -> list:
  """transformers builds a shared expert even of width 0 (it adds nothing); its empty tensors, and
  Qwen2-MoE's gate of it (whose values are not kept: zeros), so that from_pretrained finds them."""
  if f.shared is None or spec.moe.shared_expert_intermediate_size or not spec.moe.num_experts:
    return []
  H, out = spec.hidden_size, []
  layers = [l for l, moe in enumerate(spec.moe_pattern) if moe] + list(
      range(spec.num_layers, spec.num_layers + spec.mtp_num_layers))
  for l in layers:
    prefix = f"model.layers.{l}.{f.moe_prefix}.{f.shared}."
    for name, shape in (("gate_proj", (0, H)), ("up_proj", (0, H)), ("down_proj", (H, 0))):
      out.append((f"{prefix}{name}.weight", shape, dtype, lambda shape=shape: np.zeros(shape, dtype)))
    if f.name == "qwen2_moe":
      out.append((f"model.layers.{l}.{f.moe_prefix}.shared_expert_gate.weight", (1, H), dtype,
                  lambda: np.zeros((1, H), dtype)))
  return out


def _shared_mtp_copies(spec: ModelSpec, tensors: list) -> list:
  """DeepSeek's MTP layers carry their own copies of the embedding and head: write them."""
  by_name = {t[0]: t for t in tensors}
  out = []
  for k in range(spec.mtp_num_layers):
    l = spec.num_layers + k
    head = "lm_head.weight" if "lm_head.weight" in by_name else "model.embed_tokens.weight"
    for name, main in ((f"model.layers.{l}.embed_tokens.weight", "model.embed_tokens.weight"),
                       (f"model.layers.{l}.shared_head.head.weight", head)):
      out.append((name, *by_name[main][1:]))
  return out
