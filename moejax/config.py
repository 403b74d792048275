"""The config schema: defaults, validation with actionable errors, derived sizes.

Recipes (`configs/NAME.py`) start from `base_config()` and change values; keys
follow Megatron-LM flags without the section prefix (`--moe-router-topk` is
`moe.router_topk`, `--train-iters` is `train.train_iters`). The README has the
full flag table.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """One or more config problems; each line names the key and the fix."""

  def __init__(self, problems: list[str]):
    self.problems = list(problems)
    super().__init__("invalid config:\n  - " + "\n  - ".join(self.problems))


def base_config() -> ml_collections.ConfigDict:
  """All keys with their defaults. Recipes override values, never add keys."""
  c = ml_collections.ConfigDict()

  c.model = dict(
      num_layers=2,
      hidden_size=64,
      ffn_hidden_size=128,          # dense (non-MoE) layers
      num_attention_heads=4,
      num_query_groups=4,           # KV heads (GQA); == heads is plain MHA
      kv_channels=ml_collections.FieldReference(None, field_type=int),  # head dim; None = hidden/heads
      vocab_size=257,
      rotary_base=10000.0,
      norm_epsilon=1e-5,
      init_method_std=0.02,
      params_dtype="float32",       # master weights
      dtype="bfloat16",             # compute dtype
      attention_impl="auto",        # auto | xla | cudnn
  )
  c.moe = dict(
      num_experts=ml_collections.FieldReference(None, field_type=int),  # None: dense model
      router_topk=2,
      ffn_hidden_size=ml_collections.FieldReference(None, field_type=int),  # None = model.ffn_hidden_size
      shared_expert_intermediate_size=ml_collections.FieldReference(None, field_type=int),
      layer_freq=ml_collections.FieldReference(1, field_type=object),  # int N (every Nth) or list of 0/1
      # aux_loss | seq_aux_loss | global_aux_loss | sinkhorn | none, or a list with a list of coeffs
      router_load_balancing_type=ml_collections.FieldReference("aux_loss", field_type=object),
      aux_loss_coeff=ml_collections.FieldReference(0.0, field_type=object),
      z_loss_coeff=0.0,
      router_score_function="softmax",
      router_pre_softmax=False,
      router_topk_scaling_factor=ml_collections.FieldReference(None, field_type=float),
      router_num_groups=ml_collections.FieldReference(None, field_type=int),
      router_group_topk=ml_collections.FieldReference(None, field_type=int),
      router_dtype="fp32",
      router_enable_expert_bias=False,   # aux-loss-free balancing (DeepSeek-V3); needs sigmoid
      router_bias_update_rate=1e-3,
      input_jitter_eps=ml_collections.FieldReference(None, field_type=float),
      router_force_load_balancing=False,  # benchmark: random logits spread tokens evenly
      expert_capacity_factor=ml_collections.FieldReference(None, field_type=float),  # None: dropless
      token_drop_policy="probs",         # probs | position
      pad_expert_input_to_capacity=False,
      token_dispatcher_type="allgather",  # allgather | alltoall (benchmarks/RESULTS.md: "MoE layer / dispatch")
      token_exchange="all_to_all",  # alltoall exchange primitive: all_to_all (padded) | ragged_all_to_all
      exchange_capacity_factor=ml_collections.FieldReference(None, field_type=float),  # alltoall buffer rows
                                    # per rank pair = factor * T*K/ep; None = worst case; overflow -> allgather path
      shared_expert_gate=False,     # Qwen2-MoE: shared expert output scaled by sigmoid(x @ w_gate)
      shared_expert_overlap=True,   # shared experts independent of the exchange so XLA can overlap them
      grouped_gemm_impl="auto",     # auto | pallas | xla | tokamax
  )
  c.parallel = dict(
      tp=1, cp=1, pp=1, ep=1,
      etp=ml_collections.FieldReference(None, field_type=int),  # None = tp
      vpp=ml_collections.FieldReference(None, field_type=int),
      dp=-1,                        # -1: derived as devices / (tp*cp*pp)
      sequence_parallel=False,
  )
  c.data = dict(
      source="pydoc",               # pydoc (bundled text) | synthetic | indexed (Megatron .bin/.idx)
      seed=1234,
      path=(),                      # indexed: .bin/.idx prefixes, optionally weighted like
                                    # Megatron's --data-path: ("0.3", "a", "0.7", "b")
      split="969,30,1",             # indexed: train,valid,test weights (Megatron's --split)
      cache_dir="",                 # indexed: sample-index cache; "" = next to the data
      eod=256,                      # end-of-document token id (the byte tokenizer's by default)
      reset_position_ids=False,     # position ids restart after each eod token
      reset_attention_mask=False,   # tokens attend only within their own document
      eod_mask_loss=False,          # no loss at positions whose input token is eod
  )
  c.optim = dict(
      optimizer="adam",
      lr=3e-4,
      min_lr=3e-5,
      weight_decay=0.1,
      adam_beta1=0.9,
      adam_beta2=0.95,
      adam_eps=1e-8,
      clip_grad=1.0,
      lr_warmup_iters=0,
      lr_decay_style="cosine",      # cosine | constant
      lr_decay_iters=ml_collections.FieldReference(None, field_type=int),  # None = train_iters
  )
  c.train = dict(
      train_iters=100,
      micro_batch_size=1,           # per data-parallel rank, as in Megatron
      global_batch_size=8,
      seq_length=128,
      seed=0,
      recompute_granularity=ml_collections.FieldReference(None, field_type=str),  # None | full
      log_interval=10,
      eval_interval=0,              # evaluate on the validation split every N steps (0 = never)
      eval_iters=10,                # global batches per evaluation
  )
  c.checkpoint = dict(
      save_interval=100,
      max_to_keep=2,
      async_save=True,
  )
  c.logging = dict(
      tensorboard=True,
      peak_tflops_per_device=0.0,   # 0: detect (H100/H200: 989); unknown devices log mfu as null
      moe_per_layer=False,          # per-MoE-layer series (losses, load, drops) besides the summary
  )
  return c


_CHOICES = {
    ("model", "attention_impl"): ("auto", "xla", "cudnn"),
    ("model", "dtype"): ("float32", "bfloat16", "float16"),
    ("model", "params_dtype"): ("float32", "bfloat16"),
    ("moe", "token_drop_policy"): ("probs", "position"),
    ("moe", "router_score_function"): ("softmax", "sigmoid"),
    ("moe", "router_dtype"): ("fp32", "fp64"),
    ("moe", "token_dispatcher_type"): ("allgather", "alltoall"),
    ("moe", "token_exchange"): ("all_to_all", "ragged_all_to_all"),
    ("moe", "grouped_gemm_impl"): ("auto", "pallas", "xla", "tokamax"),
    ("data", "source"): ("pydoc", "synthetic", "indexed"),
    ("optim", "optimizer"): ("adam",),
    ("optim", "lr_decay_style"): ("cosine", "constant"),
}


def _unknown_keys(cfg, ref, prefix="") -> list[str]:
  problems = []
  for k in cfg.keys():
    if k not in ref:
      near = difflib.get_close_matches(k, list(ref.keys()), n=1)
      hint = f" (did you mean {prefix}{near[0]}?)" if near else ""
      problems.append(f"unknown key {prefix}{k}{hint}: remove it or use a key from moejax.config.base_config()")
    elif isinstance(ref[k], ml_collections.ConfigDict):
      if not isinstance(cfg[k], ml_collections.ConfigDict):
        problems.append(f"{prefix}{k} must be a section, got {cfg[k]!r}")
      else:
        problems += _unknown_keys(cfg[k], ref[k], f"{prefix}{k}.")
  return problems


@dataclasses.dataclass(frozen=True)
class ParallelSizes:
  """Megatron's parallel sizes; dp and edp are derived (MoE parallel folding)."""
  tp: int
  cp: int
  pp: int
  ep: int
  etp: int
  dp: int
  edp: int

  @property
  def num_devices(self) -> int:
    return self.tp * self.cp * self.pp * self.dp


def parallel_sizes(cfg, num_devices: int) -> ParallelSizes:
  """Derives dp = N/(tp·cp·pp) and edp = N/(etp·ep·pp); assumes a validated config."""
  p = cfg.parallel
  etp = p.etp if p.etp is not None else p.tp
  dp = num_devices // (p.tp * p.cp * p.pp)
  edp = num_devices // (etp * p.ep * p.pp)
  return ParallelSizes(tp=p.tp, cp=p.cp, pp=p.pp, ep=p.ep, etp=etp, dp=dp, edp=edp)


def moe_layer_pattern(cfg) -> list[bool]:
  """Which layers are MoE, from `moe.layer_freq` (Megatron's --moe-layer-freq)."""
  L = cfg.model.num_layers
  if cfg.moe.num_experts is None:
    return [False] * L
  freq = cfg.moe.layer_freq
  if isinstance(freq, int):
    return [i % freq == 0 for i in range(L)]
  return [bool(v) for v in freq]


def head_dim(cfg) -> int:
  m = cfg.model
  return m.kv_channels if m.kv_channels is not None else m.hidden_size // m.num_attention_heads


def moe_ffn_hidden_size(cfg) -> int:
  return cfg.moe.ffn_hidden_size if cfg.moe.ffn_hidden_size is not None else cfg.model.ffn_hidden_size


def num_microbatches(cfg, num_devices: int) -> int:
  sizes = parallel_sizes(cfg, num_devices)
  return cfg.train.global_batch_size // (cfg.train.micro_batch_size * sizes.dp)


def validate(cfg, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem, each with the key and the fix."""
  problems = _unknown_keys(cfg, base_config())
  if problems:
    raise ConfigError(problems)

  for (sec, key), choices in _CHOICES.items():
    v = cfg[sec][key]
    if v not in choices:
      problems.append(f"{sec}.{key}={v!r} is not one of {choices}")

  m, moe, p, t = cfg.model, cfg.moe, cfg.parallel, cfg.train
  for sec, keys in (("model", ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads",
                               "num_query_groups", "vocab_size")),
                    ("train", ("train_iters", "micro_batch_size", "global_batch_size", "seq_length")),
                    ("parallel", ("tp", "cp", "pp", "ep"))):
    for k in keys:
      if not isinstance(cfg[sec][k], int) or cfg[sec][k] < 1:
        problems.append(f"{sec}.{k}={cfg[sec][k]!r} must be a positive integer")
  if problems:
    raise ConfigError(problems)

  d = cfg.data
  if (d.reset_position_ids or d.reset_attention_mask or d.eod_mask_loss) and not 0 <= d.eod < m.vocab_size:
    problems.append(f"data.eod={d.eod} is outside model.vocab_size={m.vocab_size}: set data.eod to the "
                    "tokenizer's end-of-document id (needed by data.reset_* / data.eod_mask_loss)")
  if m.num_attention_heads % m.num_query_groups:
    problems.append(f"model.num_attention_heads={m.num_attention_heads} is not divisible by "
                    f"model.num_query_groups={m.num_query_groups}: choose a divisor of the head count")
  if m.kv_channels is None and m.hidden_size % m.num_attention_heads:
    problems.append(f"model.hidden_size={m.hidden_size} is not divisible by model.num_attention_heads="
                    f"{m.num_attention_heads}: set model.kv_channels explicitly or change the head count")
  etp = p.etp if p.etp is not None else p.tp
  if m.num_attention_heads % p.tp:
    problems.append(f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tp={p.tp}")
  if m.num_query_groups % p.tp:
    problems.append(f"model.num_query_groups={m.num_query_groups} (KV heads) is not divisible by "
                    f"parallel.tp={p.tp}: use tp <= {m.num_query_groups} that divides it")
  if m.ffn_hidden_size % p.tp:
    problems.append(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={p.tp}")
  if m.vocab_size % p.tp:
    problems.append(f"model.vocab_size={m.vocab_size} is not divisible by parallel.tp={p.tp}: pad the vocabulary")
  if p.sequence_parallel and t.seq_length % (p.tp * p.cp):
    problems.append(f"train.seq_length={t.seq_length} is not divisible by parallel.tp*cp={p.tp * p.cp} "
                    "(needed by parallel.sequence_parallel)")
  elif t.seq_length % p.cp:
    problems.append(f"train.seq_length={t.seq_length} is not divisible by parallel.cp={p.cp}")
  if p.pp != 1:
    problems.append(f"parallel.pp={p.pp}: pipeline parallelism is not implemented yet; set parallel.pp=1")
  if p.cp != 1:
    problems.append(f"parallel.cp={p.cp}: context parallelism is not implemented yet; set parallel.cp=1")
  if p.vpp is not None:
    problems.append("parallel.vpp is set but pipeline parallelism is not implemented yet; leave it None")
  if etp < 1:
    problems.append(f"parallel.etp={etp} must be a positive integer")

  if moe.num_experts is not None:
    E, K = moe.num_experts, moe.router_topk
    if E < 1:
      problems.append(f"moe.num_experts={E} must be positive (or None for a dense model)")
    if not 1 <= K <= E:
      problems.append(f"moe.router_topk={K} must be between 1 and moe.num_experts={E}")
    if E % p.ep:
      problems.append(f"moe.num_experts={E} is not divisible by parallel.ep={p.ep}")
    if moe_ffn_hidden_size(cfg) % etp:
      problems.append(f"moe.ffn_hidden_size={moe_ffn_hidden_size(cfg)} is not divisible by parallel.etp={etp}")
    ecf = moe.exchange_capacity_factor
    if ecf is not None and not ecf >= 1.0:
      problems.append(f"moe.exchange_capacity_factor={ecf} must be >= 1.0 (or None for the worst-case buffer)")
    if moe.shared_expert_gate and not moe.shared_expert_intermediate_size:
      problems.append("moe.shared_expert_gate=True needs moe.shared_expert_intermediate_size to be set")
    if p.ep > 1 and p.tp > 1 and not p.sequence_parallel:
      problems.append(f"parallel.ep={p.ep} with parallel.tp={p.tp} needs parallel.sequence_parallel=True "
                      "(as in Megatron)")
    freq = moe.layer_freq
    if isinstance(freq, int):
      if freq < 1:
        problems.append(f"moe.layer_freq={freq} must be >= 1")
    elif isinstance(freq, (list, tuple)):
      if len(freq) != m.num_layers or any(v not in (0, 1) for v in freq):
        problems.append(f"moe.layer_freq={list(freq)} must be a list of {m.num_layers} zeros and ones "
                        "(one per layer, 1 = MoE)")
    else:
      problems.append(f"moe.layer_freq={freq!r} must be an int or a list of 0/1")
    problems += _router_problems(moe)
    if moe.router_num_groups is not None:
      G, g = moe.router_num_groups, moe.router_group_topk
      if E % G:
        problems.append(f"moe.num_experts={E} is not divisible by moe.router_num_groups={G}")
      if g is None or not 1 <= g <= G:
        problems.append(f"moe.router_group_topk={g} must be set between 1 and moe.router_num_groups={G}")
      elif K % g:
        problems.append(f"moe.router_topk={K} is not divisible by moe.router_group_topk={g}")
  elif p.ep > 1:
    problems.append(f"parallel.ep={p.ep} needs moe.num_experts to be set")

  problems += _data_problems(cfg)

  if num_devices is not None:
    denom = p.tp * p.cp * p.pp
    if num_devices % denom:
      problems.append(f"parallel.tp*cp*pp={denom} does not divide the {num_devices} devices")
    elif p.dp != -1 and p.dp * denom != num_devices:
      problems.append(f"mesh size parallel.dp*tp*cp*pp={p.dp * denom} != {num_devices} devices: "
                      f"set parallel.dp=-1 to derive it or parallel.dp={num_devices // denom}")
    if num_devices % (etp * p.ep * p.pp):
      problems.append(f"parallel.etp*ep*pp={etp * p.ep * p.pp} does not divide the {num_devices} devices")
    if not problems:
      dp = num_devices // denom
      per_step = t.micro_batch_size * dp
      if t.global_batch_size % per_step:
        problems.append(f"train.global_batch_size={t.global_batch_size} is not divisible by "
                        f"train.micro_batch_size*dp={t.micro_batch_size}*{dp}={per_step}")
      else:
        from moejax.parallel.mesh import fold_axes  # local: mesh imports config
        try:
          fold_axes(parallel_sizes(cfg, num_devices))
        except ValueError as e:
          problems.append(str(e))
  if problems:
    raise ConfigError(problems)


def _resolve(cfg: ml_collections.ConfigDict, dotted: str):
  """(parent section, leaf name) of a dotted key, or ConfigError naming the unknown part."""
  node, parts = cfg, dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      near = difflib.get_close_matches(part, known, n=1)
      hint = f" (did you mean {'.'.join(parts[:i] + near)}?)" if near else ""
      raise ConfigError([f"unknown key {'.'.join(parts[:i + 1])}{hint}"])
    if i < len(parts) - 1:
      node = node[part]
  return node, parts[-1]


def _data_problems(cfg) -> list[str]:
  """Data and evaluation settings: files exist, the split leaves no needed set empty."""
  d, t = cfg.data, cfg.train
  problems = []
  if not isinstance(t.eval_interval, int) or t.eval_interval < 0:
    problems.append(f"train.eval_interval={t.eval_interval!r} must be an integer >= 0 (0 = no evaluation)")
  elif t.eval_interval and (not isinstance(t.eval_iters, int) or t.eval_iters < 1):
    problems.append(f"train.eval_iters={t.eval_iters!r} must be a positive integer when train.eval_interval is set")
  if d.source != "indexed":
    if t.eval_interval:
      problems.append(f"train.eval_interval={t.eval_interval} needs a validation split: set "
                      "data.source='indexed' with data.path, or train.eval_interval=0")
    return problems
  from moejax.data.blend import parse_blend  # local: keeps config import light
  from moejax.data.gpt_dataset import parse_split, split_ranges
  from moejax.data.indexed import IndexedDataset, IndexedDatasetError
  try:
    prefixes, _ = parse_blend(list(d.path))
    weights = parse_split(d.split)
  except ValueError as e:
    return problems + [str(e)]
  if t.eval_interval and weights[1] == 0:
    problems.append(f"train.eval_interval={t.eval_interval} but data.split={d.split!r} gives the "
                    "validation set weight 0: give it a weight (e.g. '969,30,1') or set train.eval_interval=0")
  for prefix in prefixes:
    try:
      split_ranges(len(IndexedDataset(prefix)), d.split, prefix)
    except (IndexedDatasetError, ValueError) as e:
      problems.append(f"data.path entry {prefix!r}: {e}")
  return problems


_LB_TYPES = ("aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none")


def _router_problems(moe) -> list[str]:
  """Router and load-balancing keys (Megatron's TransformerConfig checks)."""
  problems = []
  types, coeffs = moe.router_load_balancing_type, moe.aux_loss_coeff
  if isinstance(types, (list, tuple)):
    bad = [t for t in types if t not in _LB_TYPES]
    if bad or not types:
      problems.append(f"moe.router_load_balancing_type={list(types)!r}: every entry must be one of {_LB_TYPES}")
    if not isinstance(coeffs, (list, tuple)) or len(coeffs) != len(types):
      problems.append(f"moe.aux_loss_coeff={coeffs!r} must be a list of {len(types)} numbers, one per entry "
                      f"of moe.router_load_balancing_type={list(types)!r}")
  elif types not in _LB_TYPES:
    problems.append(f"moe.router_load_balancing_type={types!r} is not one of {_LB_TYPES} (or a list of them)")
  elif isinstance(coeffs, (list, tuple)):
    problems.append(f"moe.aux_loss_coeff={list(coeffs)!r} is a list but moe.router_load_balancing_type={types!r} "
                    "is one type: give one number, or a list of types")
  flat_types = list(types) if isinstance(types, (list, tuple)) else [types]
  flat_coeffs = list(coeffs) if isinstance(coeffs, (list, tuple)) else [coeffs]
  if any(not isinstance(c, (int, float)) or c < 0 for c in flat_coeffs):
    problems.append(f"moe.aux_loss_coeff={coeffs!r} must be non-negative number(s)")
  elif "sinkhorn" in flat_types and any(flat_coeffs):
    problems.append("moe.router_load_balancing_type='sinkhorn' does not use an aux loss: set moe.aux_loss_coeff=0")
  if moe.router_enable_expert_bias and moe.router_score_function != "sigmoid":
    problems.append("moe.router_enable_expert_bias=True needs moe.router_score_function='sigmoid' (as in Megatron)")
  if (moe.router_topk == 1 and moe.router_score_function == "softmax" and not moe.router_pre_softmax
      and "sinkhorn" not in flat_types):
    problems.append("moe.router_topk=1 with softmax after top-k gives the router no gradient: "
                    "set moe.router_pre_softmax=True")
  if moe.expert_capacity_factor is not None:
    if moe.expert_capacity_factor <= 0:
      problems.append(f"moe.expert_capacity_factor={moe.expert_capacity_factor} must be > 0 (or None: dropless)")
    if "sinkhorn" in flat_types:
      problems.append("moe.expert_capacity_factor works only with aux_loss, seq_aux_loss, global_aux_loss "
                      "or none load balancing, not sinkhorn")
  elif moe.pad_expert_input_to_capacity:
    problems.append("moe.pad_expert_input_to_capacity=True needs moe.expert_capacity_factor to be set")
  if moe.input_jitter_eps is not None and not 0 < moe.input_jitter_eps < 1:
    problems.append(f"moe.input_jitter_eps={moe.input_jitter_eps} must be in (0, 1) or None")
  if moe.router_dtype == "fp64":
    import jax  # local: config stays light
    if not jax.config.jax_enable_x64:
      problems.append("moe.router_dtype='fp64' needs 64-bit JAX: set JAX_ENABLE_X64=1 "
                      "(or jax.config.update('jax_enable_x64', True)) or use 'fp32'")
  return problems


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets dotted keys (`{"moe.num_experts": 8}`), with a clear error on unknown ones."""
  for dotted, value in overrides.items():
    node, leaf = _resolve(cfg, dotted)
    node[leaf] = value


def check_override_keys(argv: list[str]) -> None:
  """Rejects `--config.a.b=v` flags whose key the schema lacks, before flag parsing."""
  ref = base_config()
  for arg in argv:
    if arg.startswith("--config."):
      _resolve(ref, arg[len("--config."):].split("=", 1)[0])


def num_params_estimate(cfg) -> int:
  """Parameter count from the formulas (checked against the built model in tests)."""
  m = cfg.model
  H, hd = m.hidden_size, head_dim(cfg)
  attn = H * hd * (m.num_attention_heads * 2 + m.num_query_groups * 2)
  total = 2 * m.vocab_size * H + H
  for is_moe in moe_layer_pattern(cfg):
    total += attn + 2 * H
    if is_moe:
      F = moe_ffn_hidden_size(cfg)
      total += H * cfg.moe.num_experts + cfg.moe.num_experts * 3 * H * F
      if cfg.moe.shared_expert_intermediate_size:
        total += 3 * H * cfg.moe.shared_expert_intermediate_size
    else:
      total += 3 * H * m.ffn_hidden_size
  return total


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything the Flax modules need, frozen and hashable.

  Built from a config by `model_spec(cfg)`, or directly when reusing one module
  (e.g. `MoELayer(ModelSpec(hidden_size=512, num_experts=8))`) in other code.
  """
  hidden_size: int = 64
  num_layers: int = 2
  ffn_hidden_size: int = 128
  num_attention_heads: int = 4
  num_query_groups: int = 4
  head_dim: int = 16
  vocab_size: int = 257
  rotary_base: float = 10000.0
  norm_epsilon: float = 1e-5
  init_std: float = 0.02
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention_impl: str = "auto"
  moe_pattern: tuple[bool, ...] = ()
  num_experts: int | None = None
  router_topk: int = 2
  moe_ffn_hidden_size: int = 128
  shared_expert_intermediate_size: int | None = None
  router_load_balancing_type: str | tuple[str, ...] = "aux_loss"
  aux_loss_coeff: float | tuple[float, ...] = 0.0
  z_loss_coeff: float = 0.0
  router_score_function: str = "softmax"
  router_pre_softmax: bool = False
  router_topk_scaling_factor: float | None = None
  router_num_groups: int | None = None
  router_group_topk: int | None = None
  router_dtype: str = "fp32"
  router_enable_expert_bias: bool = False
  router_bias_update_rate: float = 1e-3
  input_jitter_eps: float | None = None
  router_force_load_balancing: bool = False
  expert_capacity_factor: float | None = None
  token_drop_policy: str = "probs"
  pad_expert_input_to_capacity: bool = False
  grouped_gemm_impl: str = "auto"
  token_dispatcher_type: str = "allgather"
  token_exchange: str = "all_to_all"
  exchange_capacity_factor: float | None = None
  shared_expert_gate: bool = False
  shared_expert_overlap: bool = True
  recompute: str | None = None
  eod_token: int = 256
  reset_position_ids: bool = False
  reset_attention_mask: bool = False
  eod_mask_loss: bool = False


def _hashable(v):
  return tuple(v) if isinstance(v, (list, tuple)) else v


def model_spec(cfg) -> ModelSpec:
  m, moe = cfg.model, cfg.moe
  return ModelSpec(
      hidden_size=m.hidden_size, num_layers=m.num_layers, ffn_hidden_size=m.ffn_hidden_size,
      num_attention_heads=m.num_attention_heads, num_query_groups=m.num_query_groups,
      head_dim=head_dim(cfg), vocab_size=m.vocab_size, rotary_base=m.rotary_base,
      norm_epsilon=m.norm_epsilon, init_std=m.init_method_std, dtype=m.dtype,
      param_dtype=m.params_dtype, attention_impl=m.attention_impl,
      moe_pattern=tuple(moe_layer_pattern(cfg)), num_experts=moe.num_experts,
      router_topk=moe.router_topk, moe_ffn_hidden_size=moe_ffn_hidden_size(cfg),
      shared_expert_intermediate_size=moe.shared_expert_intermediate_size,
      router_load_balancing_type=_hashable(moe.router_load_balancing_type),
      aux_loss_coeff=_hashable(moe.aux_loss_coeff), z_loss_coeff=moe.z_loss_coeff,
      router_score_function=moe.router_score_function, router_pre_softmax=moe.router_pre_softmax,
      router_topk_scaling_factor=moe.router_topk_scaling_factor,
      router_num_groups=moe.router_num_groups, router_group_topk=moe.router_group_topk,
      router_dtype=moe.router_dtype, router_enable_expert_bias=moe.router_enable_expert_bias,
      router_bias_update_rate=moe.router_bias_update_rate, input_jitter_eps=moe.input_jitter_eps,
      router_force_load_balancing=moe.router_force_load_balancing,
      expert_capacity_factor=moe.expert_capacity_factor, token_drop_policy=moe.token_drop_policy,
      pad_expert_input_to_capacity=moe.pad_expert_input_to_capacity,
      token_dispatcher_type=moe.token_dispatcher_type, token_exchange=moe.token_exchange,
      exchange_capacity_factor=moe.exchange_capacity_factor, shared_expert_gate=moe.shared_expert_gate,
      shared_expert_overlap=moe.shared_expert_overlap,
      grouped_gemm_impl=moe.grouped_gemm_impl,
      recompute=cfg.train.recompute_granularity, eod_token=cfg.data.eod,
      reset_position_ids=cfg.data.reset_position_ids, reset_attention_mask=cfg.data.reset_attention_mask,
      eod_mask_loss=cfg.data.eod_mask_loss)
