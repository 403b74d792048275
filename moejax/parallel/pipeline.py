"""Pipeline parallelism without the model: which layers each stage holds, and when it runs them.

Layout. The model is cut into V = pp·vpp virtual stages; virtual stage v = chunk·pp + rank runs
on pp rank `rank` (Megatron's interleaved assignment). Each virtual stage is a string over
`E` (embedding), `t` (decoder layer), `m` (MTP layer: parsed, refused until MTP is pipelined)
and `L` (final norm, head and loss), written with Megatron's `--pipeline-model-parallel-layout`
grammar (`parallel.pipeline_layout`, e.g. "Et*3|(tt|)*29,m|L": `|` ends a stage, `x*n` and
`(...)*n` repeat, commas are cosmetic), or derived from
`parallel.decoder_first/last_pipeline_num_layers`, or split evenly.

Schedule. All stages advance in lockstep ticks (one SPMD program); in a tick every stage runs
at most one forward (F) and one backward (B) of a virtual stage, then activations move one
stage up the ring and cotangents one stage down (collective permutes). Micro-batch i (group
g = i // pp, p = i % pp) runs F on virtual stage v = c·pp + s at

    t_F(i, v) = g·V + c·pp + p + s

(Megatron's interleaved order: chunk-major groups of pp micro-batches), and B at

    1f1b:  t_B(i, v) = t_F(i, v) + 2·(V − 1 − v)       (the cotangent returns as soon as it can)
    gpipe: t_B(i, v) = T_F + t_F(i, V − 1 − v)          (every backward after the last forward)

The loss stage's backward runs in the tick of its forward (one vjp does both). A stage keeps
each micro-batch's input from its F to its B (the backward recomputes the stage from it), so
1f1b holds at most pp·(vpp+1) − 1 inputs per stage whatever the number of micro-batches, while
gpipe holds all m·vpp. Both are conflict-free: no stage gets two F or two B in a tick.

Bubble fraction: with T_F (T_B) the ticks in which some stage runs a forward (backward), each
stage idles (T_F + T_B − 2·m·vpp) / (2·m·vpp) of its useful time; for m a multiple of pp this
is Megatron's (pp − 1)/(m·vpp) for both schedules.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

ITEMS = {"E": "embedding", "t": "decoder", "m": "mtp", "L": "loss"}


def parse_layout(text: str) -> list[str]:
  """Megatron's layout string as one string of item characters per virtual stage (in v order).

  Raises ValueError naming a character outside E, t, m, L.
  """
  s = text.replace(",", "").replace(" ", "")
  s = re.sub(r"\(([^)]+)\)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
  s = re.sub(r"(.)\*(\d+)", lambda m: m.group(1) * int(m.group(2)), s)
  stages = s.split("|")
  bad = sorted({ch for st in stages for ch in st if ch not in ITEMS})
  if bad:
    raise ValueError(f"characters {bad} (known: E embedding, t decoder layer, m MTP layer, L loss)")
  return stages


@dataclasses.dataclass(frozen=True)
class PipelineLayout:
  """What every virtual stage holds; `stages[v]` for v = chunk·pp + rank."""
  pp: int
  vpp: int
  stages: tuple[str, ...]

  def stage(self, rank: int, chunk: int) -> str:
    return self.stages[chunk * self.pp + rank]

  def decoder_layers(self, rank: int, chunk: int) -> list[int]:
    """Global ids of the decoder layers of one virtual stage (layers are numbered in v order)."""
    v = chunk * self.pp + rank
    start = sum(st.count("t") for st in self.stages[:v])
    return list(range(start, start + self.stages[v].count("t")))

  @property
  def max_layers(self) -> int:
    return max(st.count("t") for st in self.stages)

  def describe(self) -> str:
    """One line per pp rank: what each of its virtual stages holds."""
    def name(st):
      parts = [f"{ITEMS[ch]}*{len(run)}" if len(run) > 1 else ITEMS[ch] for run, ch in re.findall(r"((.)\2*)", st)]
      return ",".join(parts) or "(empty)"
    return "\n".join(f"  pp rank {r}: " + " | ".join(name(self.stage(r, c)) for c in range(self.vpp))
                     for r in range(self.pp))


def _even_counts(num_layers: int, pp: int, vpp: int) -> list[int]:
  return [num_layers // (pp * vpp)] * (pp * vpp)


def _first_last_counts(num_layers, pp, vpp, first, last) -> list[int]:
  """Megatron's uneven split: `first`/`last` layers on the first/last rank, the rest evenly."""
  middle_ranks = pp - (first is not None) - (last is not None)
  middle = (num_layers - (first or 0) - (last or 0)) // middle_ranks if middle_ranks else 0
  per_rank = [middle] * pp
  if first is not None:
    per_rank[0] = first
  if last is not None:
    per_rank[-1] = last
  return [per_rank[v % pp] // vpp for v in range(pp * vpp)]


def _split_problems(num_layers, pp, vpp, first, last) -> list[str]:
  """Megatron's checks of the even and first/last splits, as one-line problems."""
  key = "parallel.decoder_first_pipeline_num_layers"
  key_last = "parallel.decoder_last_pipeline_num_layers"
  if first is None and last is None:
    if num_layers % pp:
      return [f"model.num_layers={num_layers} is not divisible by parallel.pp={pp}: set "
              f"{key}/{key_last} or parallel.pipeline_layout for an uneven split"]
    if (num_layers // pp) % vpp:
      return [f"model.num_layers={num_layers} gives {num_layers // pp} layers per pp rank, not divisible by "
              f"parallel.vpp={vpp}: change vpp or set parallel.pipeline_layout"]
    return []
  bad = []
  for k, n in ((key, first), (key_last, last)):
    if n is not None and (not isinstance(n, int) or n < 1):
      bad.append(f"{k}={n!r} must be a positive integer (or None)")
    elif n is not None and n % vpp:
      bad.append(f"{k}={n} is not divisible by parallel.vpp={vpp}")
  if bad:
    return bad
  middle_ranks = pp - (first is not None) - (last is not None)
  middle = num_layers - (first or 0) - (last or 0)
  if middle < 0 or middle_ranks < 0 or bool(middle) != bool(middle_ranks):
    return [f"{key}={first} and {key_last}={last} leave {middle} layers of model.num_layers={num_layers} "
            f"for {max(middle_ranks, 0)} middle pp ranks: each middle rank needs layers"]
  if middle_ranks and (middle % middle_ranks or (middle // middle_ranks) % vpp):
    return [f"the {middle} layers between {key} and {key_last} do not split evenly over {middle_ranks} middle "
            f"pp ranks and parallel.vpp={vpp}: adjust them or set parallel.pipeline_layout"]
  return []


def _layout_string_problems(stages, pp, vpp, num_layers) -> list[str]:
  """Megatron's `validate_layer_layout` checks, as one-line problems."""
  key = "parallel.pipeline_layout"
  if len(stages) % pp:
    return [f"{key} has {len(stages)} stages ('|'-separated), not a multiple of parallel.pp={pp}"]
  if vpp is not None and len(stages) != pp * vpp:
    return [f"{key} has {len(stages)} stages but parallel.pp*vpp={pp * vpp}: give pp*vpp stages or leave "
            "parallel.vpp unset (it is then derived from the layout)"]
  flat = "".join(stages)
  bad = []
  if not flat.startswith("E") or flat.count("E") != 1:
    bad.append(f"{key}: the embedding E must come once, first")
  if not flat.endswith("L") or flat.count("L") != 1:
    bad.append(f"{key}: the loss L must come once, last")
  if flat.count("t") != num_layers:
    bad.append(f"{key} places {flat.count('t')} decoder layers (t) but model.num_layers={num_layers}")
  if "m" in flat:
    bad.append(f"{key} places MTP layers (m): MTP stages are not supported yet (the pipeline runs the "
               "decoder only); remove the m's and train MTP with parallel.pp=1")
  if len(stages) == 1:
    bad.append(f"{key} has one stage: a pipeline needs parallel.pp > 1")
  return bad


def layout_problems(cfg) -> list[str]:
  """The pipeline keys against each other and against the model (empty when pp = 1 and unset)."""
  p, num_layers = cfg.parallel, cfg.model.num_layers
  first, last = p.decoder_first_pipeline_num_layers, p.decoder_last_pipeline_num_layers
  uneven = first is not None or last is not None
  if p.pp == 1:
    set_keys = [k for k, v in (("vpp", p.vpp), ("pipeline_layout", p.pipeline_layout),
                               ("decoder_first_pipeline_num_layers", first),
                               ("decoder_last_pipeline_num_layers", last)) if v not in (None, "")]
    return [f"parallel.{k} is set but parallel.pp=1: set parallel.pp > 1 or leave it unset" for k in set_keys]
  refused = _unsupported_with_pp(cfg)
  if refused:
    return refused
  if p.vpp is not None and (not isinstance(p.vpp, int) or p.vpp < 1):
    return [f"parallel.vpp={p.vpp!r} must be a positive integer (or None: no virtual stages)"]
  if p.pipeline_layout:
    if uneven:
      return ["parallel.pipeline_layout cannot be combined with parallel.decoder_first/last_pipeline_num_layers: "
              "use one of them"]
    try:
      stages = parse_layout(p.pipeline_layout)
    except ValueError as e:
      return [f"parallel.pipeline_layout={p.pipeline_layout!r}: {e}"]
    return _layout_string_problems(stages, p.pp, p.vpp, num_layers)
  return _split_problems(num_layers, p.pp, p.vpp or 1, first, last)


def _unsupported_with_pp(cfg) -> list[str]:
  """Features the pipeline schedule does not run (yet), refused in one line each."""
  pp, bad = cfg.parallel.pp, []
  mtp = cfg.model.mtp_num_layers
  if mtp:
    bad.append(f"model.mtp_num_layers={mtp} with parallel.pp={pp}: MTP layers are not pipelined yet (no MTP "
               "stage); set model.mtp_num_layers=0 or parallel.pp=1")
  if cfg.train.offload_modules:
    bad.append(f"train.offload_modules={list(cfg.train.offload_modules)} with parallel.pp={pp}: a pipeline stage "
               "keeps only its inputs and recomputes itself in the backward, so nothing is offloaded; unset "
               "train.offload_modules")
  if not cfg.model.scan_layers:
    bad.append(f"model.scan_layers=False with parallel.pp={pp}: pipeline stages regroup the decoder's scanned "
               "layer stacks; set model.scan_layers=True (and model.scan_unroll=0 to unroll each stage's loop)")
  if cfg.parallel.fsdp:
    bad.append(f"parallel.fsdp=True with parallel.pp={pp}: FSDP's per-layer gather is not pipelined; use the "
               "distributed optimizer (optim.use_distributed_optimizer=True, the default) with pp")
  return bad


def pipeline_layout(cfg) -> PipelineLayout:
  """The layout of a config that passed `layout_problems` (pp = 1: one stage with everything)."""
  p, num_layers = cfg.parallel, cfg.model.num_layers
  if p.pipeline_layout:
    stages = parse_layout(p.pipeline_layout)
    return PipelineLayout(p.pp, len(stages) // p.pp, tuple(stages))
  vpp = p.vpp or 1
  first, last = p.decoder_first_pipeline_num_layers, p.decoder_last_pipeline_num_layers
  if first is None and last is None:
    counts = _even_counts(num_layers, p.pp, vpp)
  else:
    counts = _first_last_counts(num_layers, p.pp, vpp, first, last)
  stages = ["t" * n for n in counts]
  stages[0] = "E" + stages[0]
  stages[-1] = stages[-1] + "L"
  return PipelineLayout(p.pp, vpp, tuple(stages))


# ------------------------------------------------------------------------------ the schedule
SCHEDULES = ("1f1b", "gpipe")


@dataclasses.dataclass(frozen=True)
class Schedule:
  """Tick tables [ticks, pp] of one step: what each stage runs in each tick.

  f_store/f_slot: the stage takes a micro-batch's input this tick (the activation that arrived,
  or the tokens on the embedding stage) and keeps it in store slot f_slot until its backward;
  f_run: it also runs that virtual stage's forward (not for the loss stage, whose backward
  recomputes it in the same tick); b_run: it runs a backward from store slot b_slot.
  """
  pp: int
  vpp: int
  num_micro: int
  kind: str
  slots: int
  f_store: np.ndarray
  f_run: np.ndarray
  f_micro: np.ndarray
  f_chunk: np.ndarray
  f_slot: np.ndarray
  b_run: np.ndarray
  b_micro: np.ndarray
  b_chunk: np.ndarray
  b_slot: np.ndarray

  @property
  def ticks(self) -> int:
    return self.f_store.shape[0]

  @property
  def bubble_fraction(self) -> float:
    """Idle time over useful time per stage: (T_F + T_B − 2·m·vpp) / (2·m·vpp)."""
    t_f = int(self.f_store.any(1).sum())
    t_b = int(self.b_run.any(1).sum())
    work = 2 * self.num_micro * self.vpp
    return (t_f + t_b - work) / work

  @property
  def formula(self) -> float:
    """Megatron's bubble fraction (pp − 1)/(m·vpp), which the schedule meets when pp divides m."""
    return (self.pp - 1) / (self.num_micro * self.vpp)

  def describe(self) -> str:
    return (f"pipeline schedule {self.kind}: pp={self.pp} vpp={self.vpp}, {self.num_micro} micro-batches in "
            f"{self.ticks} ticks, up to {self.slots} stage inputs kept per stage; bubble fraction "
            f"{self.bubble_fraction:.4f} (formula (pp-1)/(m*vpp) = {self.formula:.4f})")


def make_schedule(pp: int, vpp: int, num_micro: int, kind: str = "1f1b") -> Schedule:
  """The tick tables of the module docstring's schedule, with store slots assigned per stage."""
  if kind not in SCHEDULES:
    raise ValueError(f"pipeline schedule {kind!r} is not one of {SCHEDULES}")
  V, m = pp * vpp, num_micro
  items = [(i, v) for i in range(m) for v in range(V)]

  def t_f(i, v):
    return (i // pp) * V + (v // pp) * pp + i % pp + v % pp

  t_f_end = max(t_f(i, V - 1) for i in range(m))
  if kind == "1f1b":
    t_b = lambda i, v: t_f(i, v) + 2 * (V - 1 - v)  # noqa: E731
  else:
    t_b = lambda i, v: t_f_end + t_f(i, V - 1 - v)  # noqa: E731
  ticks = max(t_b(i, 0) for i in range(m)) + 1
  z = lambda dtype: np.zeros((ticks, pp), dtype)  # noqa: E731
  f_store, f_run, b_run = z(bool), z(bool), z(bool)
  f_micro, f_chunk, f_slot, b_micro, b_chunk, b_slot = (z(np.int32) for _ in range(6))
  # Store slots per stage: an item holds one from its F tick to its B tick (inclusive); a slot
  # is reused only after the tick of the backward that frees it.
  slot_of, slots = {}, 0
  for s in range(pp):
    free_at = []  # per slot: the last tick it is busy
    for i, v in sorted((it for it in items if it[1] % pp == s), key=lambda it: t_f(*it)):
      k = next((k for k, busy in enumerate(free_at) if busy < t_f(i, v)), len(free_at))
      if k == len(free_at):
        free_at.append(0)
      free_at[k] = t_b(i, v)
      slot_of[i, v] = k
    slots = max(slots, len(free_at))
  for i, v in items:
    s, c = v % pp, v // pp
    tf, tb = t_f(i, v), t_b(i, v)
    assert not f_store[tf, s] and not b_run[tb, s], "schedule conflict"
    f_store[tf, s], f_run[tf, s] = True, v != V - 1
    f_micro[tf, s], f_chunk[tf, s], f_slot[tf, s] = i, c, slot_of[i, v]
    b_run[tb, s], b_micro[tb, s], b_chunk[tb, s], b_slot[tb, s] = True, i, c, slot_of[i, v]
  return Schedule(pp, vpp, m, kind, slots, f_store, f_run, f_micro, f_chunk, f_slot, b_run, b_micro, b_chunk,
                  b_slot)
