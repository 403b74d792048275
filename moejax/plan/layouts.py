"""Layouts of a recipe on N GPUs: every (tp, cp, pp, vpp, ep, etp) that moejax's own layout checks
accept (`moejax.parallel.mesh.problems`, the check train.py runs, folding included), each with its
memory per recompute / distributed-optimizer choice and an estimated step time.

Cost model (seconds per step, per GPU; a ranking, not a prediction):

  compute  = model FLOPs of the step / N / `tflops` (achieved TFLOP/s per GPU); full recompute
             adds one forward (×4/3), selective adds the recomputed attention scores' forward
  tp       = per layer and micro-batch, sequence parallelism's 4 all-gathers and 4 reduce-scatters
             (forward and backward) of T·h elements, each moving (tp−1)/tp of them per GPU
  ep       = per MoE layer and micro-batch, dispatch and combine forward and backward: alltoall, 4
             exchanges of the buffer's rows (`memory.expert_rows`/etp: the worst case Tn·K·ep
             unless `moe.exchange_capacity_factor` bounds it) × h, (ep−1)/ep of them leaving the
             GPU, and etp's 4 gathers/scatters of the R·h expert rows ((etp−1)/etp); allgather, 4
             gathers/reduce-scatters of Tn·h over the ep·etp group
  cp       = per layer and micro-batch, the ring's cp − 1 passes of the local keys and values
             (T·g·(d_qk + d_v) elements) forward, and twice that backward (keys/values and their gradients)
  dp       = per step, the gradients' reduce-scatter and the parameters' all-gather over cp·dp
             (non-expert weights) and edp (experts): 2 × local weights × (n−1)/n
  bubble   = (compute + tp + ep + cp + dp) · (pp − 1) / (m · vpp)  (Megatron's interleaved 1F1B bubble, m
             micro-batches)

Communication is assumed exposed (not overlapped: an upper bound, as Megatron and XLA hide part of
it) and runs at `nvlink_gbs` when its group fits in
a node (tp fastest, then cp; etp fastest, then ep, as in moejax's mesh), else at `network_gbs`.
Not modelled: pipeline sends, routing imbalance, and the lower efficiency of small per-GPU work
(short cp chunks, thin tp/etp slices).
"""
from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp

from moejax.config import model_spec
from moejax.metrics.flops import train_flops_per_token
from moejax.parallel.mesh import ParallelSizes, problems
from moejax.parallel.pipeline import make_schedule
from moejax.plan.memory import (RECOMPUTE, Memory, expert_rows, layout_memory, local_params,
                                optimizer_state_bytes)
from moejax.train.optim import STATE_DTYPES


@dataclasses.dataclass(frozen=True)
class Option:
  """One layout with one recompute and optimizer choice."""
  sizes: ParallelSizes
  vpp: int
  pipeline_layout: str | None
  recompute: str
  distributed_optimizer: bool
  memory: Memory
  step_s: float

  def name(self) -> str:
    z = self.sizes
    return (f"TP{z.tp} CP{z.cp} PP{z.pp}" + (f" VP{self.vpp}" if self.vpp > 1 else "")
            + f" EP{z.ep} ETP{z.etp} DP{z.dp} EDP{z.edp}")


def _divisors(n: int, cap: int | None = None) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0 and (cap is None or d <= cap)]


def _even_layout(num_layers: int, mtp: int, pp: int, vpp: int) -> str:
  """Megatron's layout string with the layers spread as evenly as the stages allow (the extra
  ones on the middle stages), the MTP depths on the last stage."""
  V = pp * vpp
  base, extra = divmod(num_layers, V)
  counts = [base] * V
  for i in range(extra):
    counts[1 + i % max(V - 2, 1) if V > 2 else i % V] += 1
  stages = ["t" * c for c in counts]
  stages[0] = "E" + stages[0]
  stages[-1] += "m" * mtp + "L"
  return "|".join(stages)


def _set(cfg, tp, cp, pp, vpp, ep, etp, layout=None):
  cfg.parallel.update(tp=tp, cp=cp, pp=pp, ep=ep, etp=etp, dp=-1, vpp=vpp if vpp > 1 else None,
                      sequence_parallel=tp > 1, pipeline_layout=layout, decoder_first_pipeline_num_layers=None,
                      decoder_last_pipeline_num_layers=None, fsdp=False)


def valid_layouts(cfg, gpus: int, max_tp: int = 8, max_cp: int = 8):
  """Yields (ParallelSizes, vpp, pipeline_layout or None) for every layout `problems(cfg, gpus)` accepts
  (`cfg` is changed in place: its parallel section is the last layout tried)."""
  m = cfg.model
  experts = cfg.moe.num_experts
  eps = _divisors(experts) if experts else [1]
  for pp in _divisors(gpus, m.num_layers):
    vpps = [1] + ([v for v in _divisors(m.num_layers // pp) if v > 1] if pp > 1 else [])
    for vpp in vpps:
      for tp in _divisors(gpus // pp, max_tp):
        for cp in _divisors(gpus // (pp * tp), max_cp):
          for ep in eps:
            for etp in _divisors(gpus // pp, max_tp):
              _set(cfg, tp, cp, pp, vpp, ep, etp)
              layout = None
              if problems(cfg, gpus) and pp > 1:  # an uneven split or MTP layers need a layout string
                layout = _even_layout(m.num_layers, m.mtp_num_layers or 0, pp, vpp)
                _set(cfg, tp, cp, pp, vpp, ep, etp, layout)
              if not problems(cfg, gpus):
                dp, edp = gpus // (tp * cp * pp), gpus // (etp * ep * pp)
                yield ParallelSizes(tp=tp, cp=cp, pp=pp, ep=ep, etp=etp, dp=dp, edp=edp), vpp, layout


@functools.lru_cache(maxsize=None)
def _slots(pp: int, vpp: int, m: int) -> int:
  """Stage inputs a 1F1B stage keeps; they stop growing past 2·pp micro-batches (the steady state),
  so the tick table is built for at most that many."""
  return make_schedule(pp, vpp, min(m, 2 * pp), "1f1b").slots


def step_seconds(spec, z: ParallelSizes, vpp: int, seq: int, micro: int, global_batch: int, recompute: str,
                 tflops: float, nvlink_gbs: float, network_gbs: float, gpus_per_node: int) -> float:
  """The cost model of the module docstring."""
  gpus = z.num_devices
  m = global_batch // (micro * z.dp)
  tokens = global_batch * seq
  flops = train_flops_per_token(spec, seq) * tokens / gpus
  if recompute == "full":
    flops *= 4 / 3
  elif recompute == "selective":
    scores = 2 * spec.attention.num_attention_heads * (spec.qk_dim + spec.v_dim) * seq * 0.5
    flops += scores * spec.num_layers * tokens / gpus
  compute = flops / (tflops * 1e12)
  d = 2 if spec.dtype != "float32" else 4
  T = seq * micro / z.cp
  Tn = T / z.tp
  bw = lambda group: (nvlink_gbs if group <= gpus_per_node else network_gbs) * 1e9  # noqa: E731
  layers_here = spec.num_layers / z.pp
  tp = 8 * (z.tp - 1) / z.tp * T * spec.hidden_size * d * layers_here * m / bw(z.tp * z.cp) if z.tp > 1 else 0.0
  ep = 0.0
  if spec.moe.num_experts:
    h, group = spec.hidden_size * d, z.etp * z.ep
    if spec.moe.dispatch.token_dispatcher_type == "allgather":
      ep = 4 * Tn * h * (group - 1) / bw(group)
    else:
      rows = expert_rows(spec, z, Tn)  # the exchange buffer as allocated (worst case unless bounded)
      ep = 4 * rows / z.etp * h * (z.ep - 1) / z.ep / bw(group) + 4 * rows * h * (z.etp - 1) / z.etp / bw(z.etp)
    ep *= sum(spec.moe_pattern) / z.pp * m
  a = spec.attention
  kv = T * a.num_query_groups * (spec.qk_dim + spec.v_dim) / z.tp * d
  cp = 3 * (z.cp - 1) * kv * layers_here * m / bw(z.tp * z.cp)
  dense, experts = local_params(spec, z)
  replicas = z.cp * z.dp  # non-expert gradients are reduced over every rank that saw other tokens
  dp = 2 * d * (dense * (replicas - 1) / replicas / bw(gpus // z.pp)
                + experts * (z.edp - 1) / z.edp / bw(gpus // z.pp))
  busy = compute + tp + ep + cp + dp
  return busy * (1 + (z.pp - 1) / (m * vpp))


def _adam_bytes(cfg, spec) -> int:
  """Adam's two moments per weight: in the masters' dtype, or as stored by the precision-aware optimizer."""
  o = cfg.optim
  if o.use_precision_aware_optimizer:
    return sum(jnp.dtype(STATE_DTYPES[d]).itemsize for d in (o.exp_avg_dtype, o.exp_avg_sq_dtype))
  return 2 * jnp.dtype(spec.params_dtype).itemsize


def plan(cfg, gpus: int, tflops: float = 400.0, nvlink_gbs: float = 400.0,
         network_gbs: float = 45.0, gpus_per_node: int = 8, flash: bool = True) -> list[list[Option]]:
  """Per valid layout, its options (recompute choice × distributed optimizer on/off), each with
  its memory per GPU and estimated step time."""
  spec = model_spec(cfg)
  t, adam = cfg.train, _adam_bytes(cfg, spec)
  out = []
  for z, vpp, layout in valid_layouts(cfg, gpus):
    m = t.global_batch_size // (t.micro_batch_size * z.dp)
    moments = optimizer_state_bytes(spec, z, cfg.optim.optimizer, adam)
    options = []
    for recompute in RECOMPUTE:
      cost = step_seconds(spec, z, vpp, t.seq_length, t.micro_batch_size, t.global_batch_size, recompute,
                          tflops, nvlink_gbs, network_gbs, gpus_per_node)
      for dist in (True, False):
        mem = layout_memory(spec, z, t.seq_length, t.micro_batch_size, vpp, _slots(z.pp, vpp, m) if z.pp > 1 else 0,
                            sequence_parallel=z.tp > 1, flash=flash, recompute=recompute,
                            distributed_optimizer=dist, micro_batches=m,
                            moment_bytes=moments)
        options.append(Option(z, vpp, layout, recompute, dist, mem, cost))
    out.append(options)
  return out
