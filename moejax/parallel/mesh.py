"""One physical mesh serving two views of the same devices (MoE parallel folding).

Megatron orders ranks tp (fastest), cp, dp, pp for attention and dense layers and
etp (fastest), ep, edp, pp for experts. We factor the devices into the smallest
axes on which both views agree: each mesh axis is named `<attention role>_<moe
role>` (e.g. `tp_ep`, `dp_ep`, `dp_edp`), so `ep=8, tp=2` on 8 devices gives axes
`('pp', 'dp_ep', 'tp_ep')` of sizes (1, 4, 2): outside the MoE layer the 8
devices carry tp×dp, inside they carry ep.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from moejax.config import ConfigError, padded_vocab_size
from moejax.parallel.pipeline import layout_problems

ATTN_ROLES = ("tp", "cp", "dp")    # fastest first
MOE_ROLES = ("etp", "ep", "edp")


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


def problems(cfg, num_devices: int | None = None) -> list[str]:
  """The layout checks: model dims against tp/ep/etp, sizes against the devices, folding."""
  m, moe, p, t = cfg.model, cfg.moe, cfg.parallel, cfg.train
  etp = p.etp if p.etp is not None else p.tp
  if not all(isinstance(v, int) and v >= 1
             for v in (p.tp, p.cp, p.pp, p.ep, etp, t.micro_batch_size, m.make_vocab_size_divisible_by)):
    return []  # the config's own checks report these
  problems = []
  if m.num_attention_heads % p.tp:
    problems.append(f"model.num_attention_heads={m.num_attention_heads} is not divisible by parallel.tp={p.tp}")
  if m.num_query_groups % p.tp:
    problems.append(f"model.num_query_groups={m.num_query_groups} (KV heads) is not divisible by "
                    f"parallel.tp={p.tp}: use tp <= {m.num_query_groups} that divides it")
  if m.ffn_hidden_size % p.tp:
    problems.append(f"model.ffn_hidden_size={m.ffn_hidden_size} is not divisible by parallel.tp={p.tp}")
  padded = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by)
  if padded % p.tp:
    problems.append(f"model.vocab_size={m.vocab_size} padded to {padded} rows is not divisible by parallel.tp="
                    f"{p.tp}: set model.make_vocab_size_divisible_by to a multiple of {p.tp}")
  if p.sequence_parallel and t.seq_length % (p.tp * p.cp):
    problems.append(f"train.seq_length={t.seq_length} is not divisible by parallel.tp*cp={p.tp * p.cp} "
                    "(needed by parallel.sequence_parallel)")
  if p.cp > 1 and t.seq_length % (2 * p.cp):
    problems.append(f"train.seq_length={t.seq_length} is not divisible by 2*parallel.cp={2 * p.cp} "
                    "(context parallelism splits it into 2*cp load-balanced chunks)")
  if p.cp > 1 and moe.num_experts is not None and moe.expert_capacity_factor is not None \
      and moe.token_drop_policy == "position":
    problems.append(f"moe.token_drop_policy='position' with parallel.cp={p.cp}: capacity dropping by position "
                    "would see cp's load-balanced token order; use moe.token_drop_policy='probs'")
  if p.cp > 1 and m.attention_dropout:
    problems.append(f"model.attention_dropout={m.attention_dropout} with parallel.cp={p.cp}: context parallelism's "
                    "attention has no dropout; use model.attention_dropout=0 or parallel.cp=1")
  problems += layout_problems(cfg)
  if moe.num_experts is not None:
    if moe.num_experts % p.ep:
      problems.append(f"moe.num_experts={moe.num_experts} is not divisible by parallel.ep={p.ep}")
    ffn = moe.ffn_hidden_size if moe.ffn_hidden_size is not None else m.ffn_hidden_size
    if ffn % etp:
      problems.append(f"moe.ffn_hidden_size={ffn} is not divisible by parallel.etp={etp}")
    if p.ep > 1 and p.tp > 1 and not p.sequence_parallel:
      problems.append(f"parallel.ep={p.ep} with parallel.tp={p.tp} needs parallel.sequence_parallel=True "
                      "(as in Megatron)")
  elif p.ep > 1:
    problems.append(f"parallel.ep={p.ep} needs moe.num_experts to be set")
  if num_devices is not None:
    problems += _device_problems(cfg, etp, num_devices)
  return problems


def _device_problems(cfg, etp: int, num_devices: int) -> list[str]:
  p, t = cfg.parallel, cfg.train
  problems = []
  denom = p.tp * p.cp * p.pp
  if num_devices % denom:
    problems.append(f"parallel.tp*cp*pp={denom} does not divide the {num_devices} devices")
  elif p.dp != -1 and p.dp * denom != num_devices:
    problems.append(f"mesh size parallel.dp*tp*cp*pp={p.dp * denom} != {num_devices} devices: "
                    f"set parallel.dp=-1 to derive it or parallel.dp={num_devices // denom}")
  if num_devices % (etp * p.ep * p.pp):
    problems.append(f"parallel.etp*ep*pp={etp * p.ep * p.pp} does not divide the {num_devices} devices")
  if problems:
    return problems
  dp = num_devices // denom
  per_step = t.micro_batch_size * dp
  if t.global_batch_size % per_step:
    return [f"train.global_batch_size={t.global_batch_size} is not divisible by "
            f"train.micro_batch_size*dp={t.micro_batch_size}*{dp}={per_step}"]
  try:
    fold_axes(_sizes(p, etp, num_devices))
  except ValueError as e:
    return [str(e)]
  return []


def _sizes(p, etp: int, num_devices: int) -> ParallelSizes:
  return ParallelSizes(tp=p.tp, cp=p.cp, pp=p.pp, ep=p.ep, etp=etp, dp=num_devices // (p.tp * p.cp * p.pp),
                       edp=num_devices // (etp * p.ep * p.pp))


def parallel_sizes(cfg, num_devices: int) -> ParallelSizes:
  """Derives dp = N/(tp·cp·pp) and edp = N/(etp·ep·pp); ConfigError when the layout is impossible."""
  bad = problems(cfg, num_devices)
  if bad:
    raise ConfigError(bad)
  p = cfg.parallel
  return _sizes(p, p.etp if p.etp is not None else p.tp, num_devices)


def num_microbatches(cfg, num_devices: int) -> int:
  """Gradient-accumulation steps: global batch / (micro batch · dp)."""
  sizes = parallel_sizes(cfg, num_devices)
  return cfg.train.global_batch_size // (cfg.train.micro_batch_size * sizes.dp)


@dataclasses.dataclass(frozen=True)
class FoldedAxis:
  name: str
  size: int
  attn_role: str
  moe_role: str


def _bounds(sizes):
  out, acc = [], 1
  for s in sizes:
    acc *= s
    out.append(acc)
  return out


def fold_axes(ps: ParallelSizes) -> list[FoldedAxis]:
  """Factors the non-pp devices into axes, fastest first; raises if the views don't nest."""
  attn_b = _bounds((ps.tp, ps.cp, ps.dp))
  moe_b = _bounds((ps.etp, ps.ep, ps.edp))
  cuts = sorted(set(attn_b) | set(moe_b))
  axes, prev = [], 1
  for c in cuts:
    if c % prev:
      raise ValueError(
          f"parallel layout tp={ps.tp}, cp={ps.cp}, dp={ps.dp} vs etp={ps.etp}, ep={ps.ep}, edp={ps.edp} "
          "cannot fold onto one mesh: each group size product must divide the next; "
          "use power-of-two sizes or make etp*ep a multiple of tp*cp (or a divisor of it)")
    if c == prev:
      continue
    attn_role = ATTN_ROLES[next(i for i, b in enumerate(attn_b) if c <= b)]
    moe_role = MOE_ROLES[next(i for i, b in enumerate(moe_b) if c <= b)]
    axes.append(FoldedAxis(f"{attn_role}_{moe_role}", c // prev, attn_role, moe_role))
    prev = c
  return axes


@dataclasses.dataclass(frozen=True)
class MeshLayout:
  """The mesh plus which of its axes play each Megatron role."""
  mesh: Mesh
  sizes: ParallelSizes
  axes: tuple[FoldedAxis, ...]

  def role_axes(self, role: str) -> tuple[str, ...]:
    """Mesh axes (outermost first) that make up an attention or MoE role."""
    if role == "pp":
      return ("pp",)
    return tuple(a.name for a in reversed(self.axes) if role in (a.attn_role, a.moe_role))


def make_mesh(cfg, devices=None) -> MeshLayout:
  """The folded mesh of the config's layout over `devices` (default: all)."""
  devices = list(jax.devices() if devices is None else devices)
  ps = parallel_sizes(cfg, len(devices))
  axes = fold_axes(ps)
  names = ("pp",) + tuple(a.name for a in reversed(axes))
  shape = (ps.pp,) + tuple(a.size for a in reversed(axes))
  mesh = Mesh(np.asarray(devices, dtype=object).reshape(shape), names)
  return MeshLayout(mesh=mesh, sizes=ps, axes=tuple(axes))
