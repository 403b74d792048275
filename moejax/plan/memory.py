"""Per-GPU memory of a layout, from the model's dimensions alone (no tracing, any width).

State: what the train step (moejax/train/step.py, schedule.py, state.py) holds at once, per GPU.
Non-expert weights are sharded over tp, routed experts over ep·etp, decoder layers over pp (the
embedding, head, final norm and MTP depths are held by every pp rank: moejax shards only the
layer stacks over pp); with the distributed optimizer, masters and moments also over dp (experts
over edp). Per local weight, with `shard` = 1/dp (1/edp) under the distributed optimizer, else 1:

  weights    master (`model.params_dtype`) · shard + its copy in `model.dtype`: kept in the train
             state when the master is whole (`TrainState.compute_params`), else cast on the shard
             and gathered whole once per step (`StatePlacement.compute_params`)
  gradients  on GPUs (`backend="gpu"`): the main gradients (fp32) · shard only when a step runs
             several micro-batches (their sum is held through the step); the gradients of one
             micro-batch are not held at once, because XLA's GPU scheduler runs each leaf's fused
             AdamW as soon as the backward pass has produced its gradient (one jit, the state
             donated). With the distributed optimizer each leaf's gradient is cast whole to fp32 and
             reduce-scattered onto its shard (`StatePlacement.main_grads`), one leaf at a time: the
             largest such leaf's fp32 copy is counted once. On CPUs (`backend="cpu"`, the tests'
             compiled steps) XLA holds them all: the compute copy's gradients in `model.dtype` and the
             main gradients · shard
  optimizer  Adam's two moments · shard; on CPUs also the update optax forms before applying it
             (fp32 · shard)

On one H100, at the one-GPU proxies' widths (1-4 layers, 1-4 sequences of 4096; recompute none,
selective, full), the GPU form is 0.95-1.02x the compiled step's `memory_analysis()`, where
counting every gradient and the update as held read 1.43-1.67x (benchmarks/plan_memory.py,
benchmarks/RESULTS.md). `metrics.memory.state_budget` is the persistent state alone (masters,
moments, fp32 gradients).

Activations follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", Megatron's formulas): the values the backward pass keeps per layer and
micro-batch, tensor by tensor, here in bytes and adapted to what moejax's blocks keep (listed by
`jax.ad_checkpoint.print_saved_residuals`): RMSNorm computes in fp32, SwiGLU, no dropout, GQA or
MLA, MoE. With s the sequence, b the micro-batch, T = s·b/cp the tokens of a cp rank, Tn = T/tp
under sequence parallelism (else T), h hidden, a heads, g KV groups, d_qk/d_v head dims, f the
dense FFN, F the expert FFN, E experts, and d bytes of `model.dtype`:

  norm       (8 + d)·Tn·h per RMSNorm (its fp32 input and normalised values, its output)
  attention  norm + d·T·(2·a·d_qk + 4·g·d_qk)/tp (q and k before and after RoPE, v and one more
             KV-sized copy the attention call keeps) + 8·T·d_qk
             (fp32 cos/sin) + d·T·a·d_v/tp (output-projection input); without a flash kernel also
             11·b·a/tp·(s/cp)·s (fp32 scores and probabilities, bf16 probabilities, the mask:
             Korthikanti's 5as/h term with XLA's dtypes and no dropout) and the KV heads repeated
             to a heads (GQA). MLA: q, k, v of all heads d·T·a·(2·d_qk + d_v)/tp plus its
             latents d·Tn·(q_lora + kv_lora + rope)
  dense MLP  norm + 6·d·T·f/tp (gate, up, SwiGLU's intermediates, fc2 input)
  MoE        norm + 4·Tn·h (the router's fp32 input) + 8·Tn·E (fp32 logits, probabilities)
             + d·R·h (fc1 input rows) + 3·d·R·F/etp (fc1's output and the weighted SwiGLU's, which
             keeps nothing else: `weighted_swiglu`), R rows per GPU
             (`expert_rows`): Tn·K·ep·etp, the static worst case of a dropless layer (all of the ep
             group's pairs could come here), bounded by `moe.exchange_capacity_factor`·Tn·K
             (alltoall) or the expert capacity under token dropping; shared experts as a dense
             MLP of their size
  outside    2·d·Tn·h (embedding output, final-norm input), and the fused cross-entropy's working
             set at the loss, where every layer's activations are still held: the head's weight
             gradient accumulated in fp32, 4·h·V/tp, and one chunk of logits in `model.dtype`
             (`layers.cross_entropy.chunk_positions`: ≤ 2^30 logits of the micro-batch over dp)

Recompute choices (`train.recompute_granularity`): none keeps all of it; selective is
`recompute_modules=SELECTIVE` (core_attn: no scores, probabilities or repeated KV heads;
layernorm: a norm keeps only its input; moe_act: the experts keep only fc1's output, 2 of the 3);
full keeps each layer's input d·Tn·h and, while one layer is
recomputed, that layer's full set. Without pp, all layers of one micro-batch are kept (gradient
accumulation runs micro-batches one after another). With pp (moejax's schedules, moejax/parallel/
pipeline.py) a stage keeps the inputs d·Tn·h of `Schedule.slots` micro-batches and recomputes a
virtual stage in its backward pass, holding that stage's layers under the recompute choice.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax.numpy as jnp

from moejax.config import ModelSpec
from moejax.layers.cross_entropy import chunk_positions
from moejax.metrics.flops import num_params
from moejax.metrics.memory import routed_expert_params
from moejax.parallel.mesh import ParallelSizes

RECOMPUTE = ("none", "selective", "full")
BACKENDS = ("gpu", "cpu")
SELECTIVE = ("core_attn", "layernorm", "moe_act")


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per GPU."""
  weights: float       # fp32 masters + the compute copy
  gradients: float
  optimizer: float
  activations: float
  persistent: float = 0.0  # of the above: masters, their compute copy, Adam moments (the step's arguments)

  @property
  def total(self) -> float:
    return self.weights + self.gradients + self.optimizer + self.activations


def _layer_activations(spec: ModelSpec, is_moe: bool, z: ParallelSizes, seq: int, micro: int,
                       sequence_parallel: bool, flash: bool, recompute: str) -> float:
  """Bytes one decoder layer keeps for its backward pass (see the module docstring)."""
  a, mla, d = spec.attention, spec.attention.mla, _itemsize(spec)
  h, tp, N, G = spec.hidden_size, z.tp, a.num_attention_heads, a.num_query_groups
  T = seq * micro / z.cp
  Tn = T / tp if sequence_parallel else T
  selective = recompute == "selective"
  norm = d * Tn * h if selective else (8 + d) * Tn * h
  if mla.multi_latent_attention:
    qkv = d * T * N * (2 * spec.qk_dim + spec.v_dim) / tp
    qkv += d * Tn * ((mla.q_lora_rank or 0) + mla.kv_lora_rank + mla.qk_pos_emb_head_dim)
    G = N
  else:
    qkv = d * T * (2 * N * spec.qk_dim + 4 * G * spec.qk_dim) / tp
  rope = 8 * T * spec.qk_dim
  core = 0.0
  if not flash and not selective:
    core = 11 * micro * N / tp * (seq / z.cp) * seq + (d * T * N * (spec.qk_dim + spec.v_dim) / tp if G != N else 0)
  attn = norm + qkv + rope + core + d * T * N * spec.v_dim / tp
  if not is_moe:
    return attn + norm + 6 * d * T * spec.ffn_hidden_size / tp
  m, F = spec.moe, spec.moe_ffn_hidden_size
  R = expert_rows(spec, z, Tn)
  moe = norm + 8 * Tn * m.num_experts + d * R * h + (2 if selective else 3) * d * R * F / z.etp + 4 * Tn * h
  if m.shared_expert_intermediate_size:
    moe += 6 * d * T * m.shared_expert_intermediate_size / tp
  return attn + moe


def expert_rows(spec: ModelSpec, z: ParallelSizes, tokens: float) -> float:
  """Rows of the expert buffers per GPU: static shapes hold the worst case of a dropless layer,
  every pair of the ep group landing here (ep·K·tokens), bounded by the alltoall exchange buffer
  (`moe.exchange_capacity_factor`) or by token dropping (`moe.expert_capacity_factor`); etp gathers
  its group's rows."""
  m = spec.moe
  K, E_l = m.router.router_topk, m.num_experts // z.ep
  pairs = tokens * K * z.ep
  if m.dispatch.token_dispatcher_type == "alltoall" and m.dispatch.exchange_capacity_factor is not None:
    pairs = min(pairs, m.dispatch.exchange_capacity_factor * tokens * K)
  if m.router.expert_capacity_factor is not None:
    pairs = min(pairs, E_l * math.ceil(tokens * K / m.num_experts * m.router.expert_capacity_factor))
  return pairs * z.etp


def _itemsize(spec: ModelSpec) -> int:
  return jnp.dtype(spec.dtype).itemsize


def activation_bytes(spec: ModelSpec, z: ParallelSizes, seq: int, micro: int, vpp: int = 1, slots: int = 0,
                     sequence_parallel: bool = True, flash: bool = True, recompute: str = "none") -> float:
  """Activation bytes per GPU of the busiest stage (module docstring); `slots`: the stage inputs a
  pipeline stage keeps (`Schedule.slots`)."""
  d = _itemsize(spec)
  Tn = seq * micro / z.cp / (z.tp if sequence_parallel else 1)
  layer_input = d * Tn * spec.hidden_size
  n_moe = sum(spec.moe_pattern)
  kinds = [(is_moe, n) for is_moe, n in ((False, spec.num_layers - n_moe), (True, n_moe)) if n]
  kept = {k: _layer_activations(spec, k, z, seq, micro, sequence_parallel, flash, recompute) for k, _ in kinds}
  full_set = max(_layer_activations(spec, k, z, seq, micro, sequence_parallel, flash, "none") for k, _ in kinds)
  outside = 2 * layer_input + _loss_working_set(spec, z, seq, micro)
  if z.pp == 1:
    if recompute == "full":
      return outside + layer_input * spec.num_layers + full_set
    return outside + sum(kept[k] * n for k, n in kinds)
  per_stage = math.ceil(spec.num_layers / (z.pp * vpp))
  stage = layer_input * per_stage + full_set if recompute == "full" else max(kept.values()) * per_stage
  return outside + slots * layer_input + stage


def _loss_working_set(spec: ModelSpec, z: ParallelSizes, seq: int, micro: int) -> float:
  """The fused cross-entropy's head-gradient accumulator (fp32) and one chunk of logits, per GPU."""
  V = spec.padded_vocab_size
  chunk = micro * chunk_positions(micro * z.dp, seq, V) * V / (z.cp * z.tp)  # its rows: the micro-batch over dp
  return 4 * spec.hidden_size * V / z.tp + _itemsize(spec) * chunk


def _outside_layer_params(spec: ModelSpec) -> int:
  """Embedding, head, final norm and the MTP depths: what every pp rank holds."""
  H = spec.hidden_size
  return (spec.padded_vocab_size * H * (1 + spec.untie_embeddings_and_output_weights) + H
          + num_params(spec) - num_params(spec, mtp=False))


@functools.lru_cache(maxsize=64)
def _param_split(spec: ModelSpec) -> tuple[int, int, int]:
  """(all parameters, routed experts, those every pp rank holds)."""
  return num_params(spec), routed_expert_params(spec), _outside_layer_params(spec)


def local_params(spec: ModelSpec, z: ParallelSizes) -> tuple[float, float]:
  """(non-expert, routed-expert) parameters one GPU holds: over tp (the layers also over pp), and
  over ep·etp·pp."""
  total, experts, outside = _param_split(spec)
  return (outside + (total - experts - outside) / z.pp) / z.tp, experts / (z.pp * z.ep * z.etp)


def _largest_sharded_leaf(spec: ModelSpec, z: ParallelSizes) -> float:
  """Local elements of the largest parameter leaf the distributed optimizer shards (dp > 1, or
  edp > 1 for experts): its gradient is cast whole to fp32 before its reduce-scatter, one leaf
  at a time. Leaves: the embedding and the head [V, h]/tp, a dense MLP's gate or up [h, f]/tp
  stacked over the dense layers of a pp rank, the experts' fused gate-up [E/ep, h, 2F/etp]
  stacked over the MoE layers of a pp rank."""
  h, n_moe = spec.hidden_size, sum(spec.moe_pattern)
  leaves = []
  if z.dp > 1:
    leaves += [spec.padded_vocab_size * h / z.tp,
               (spec.num_layers - n_moe) / z.pp * h * spec.ffn_hidden_size / z.tp]
  if z.edp > 1 and n_moe:
    leaves.append(n_moe / z.pp * spec.moe.num_experts / z.ep * h * 2 * spec.moe_ffn_hidden_size / z.etp)
  return max(leaves, default=0.0)


def optimizer_state_bytes(spec: ModelSpec, z: ParallelSizes, optimizer: str = "adam",
                          adam: float = 8.0) -> tuple[float, float]:
  """Optimizer-state bytes per local weight (non-expert, routed expert): Adam's two moments (`adam`
  bytes), or with Muon one momentum in the masters' dtype for the layers' matrices and Adam's moments
  for what every pp rank holds (embedding, head, final norm, MTP: counted as Adam's whole)."""
  if optimizer != "muon":
    return adam, adam
  momentum = jnp.dtype(spec.params_dtype).itemsize
  total, experts, outside = _param_split(spec)
  inner = (total - experts - outside) / z.pp
  return (adam * outside + momentum * inner) / (outside + inner), momentum


def state_bytes(spec: ModelSpec, z: ParallelSizes, distributed_optimizer: bool = True,
                moment_bytes: float | tuple[float, float] = 8, main_grad_bytes: int = 4, micro_batches: int = 1,
                backend: str = "gpu") -> tuple[float, float, float, float]:
  """(weights, gradients, optimizer, persistent) bytes per GPU that the step holds at once (module
  docstring) on `backend`, with `micro_batches` micro-batches a step; persistent: masters, their
  compute copy and moments, the step's arguments. `moment_bytes`: the optimizer state per weight, one
  number or (non-expert, routed expert) as `optimizer_state_bytes()` gives."""
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  per_weight = moment_bytes if isinstance(moment_bytes, tuple) else (moment_bytes, moment_bytes)
  master = jnp.dtype(spec.params_dtype).itemsize
  low = _itemsize(spec)
  weights = grads = optim = persistent = 0.0
  if distributed_optimizer:
    grads += main_grad_bytes * _largest_sharded_leaf(spec, z)
  for whole, data, moments in zip(local_params(spec, z), (z.dp, z.edp), per_weight):
    shard = whole / data if distributed_optimizer else whole
    cast = low != master
    copy = low * whole if cast and shard == whole else 0  # TrainState.compute_params, beside the masters
    weights += master * shard + copy + (low * whole if shard != whole else 0)
    if backend == "cpu":
      grads += low * whole + (main_grad_bytes * shard if cast or shard != whole else 0)
    elif micro_batches > 1:
      grads += main_grad_bytes * shard
    optim += (moments + (4 if backend == "cpu" else 0)) * shard
    persistent += (master + moments) * shard + copy
  return weights, grads, optim, persistent


def layout_memory(spec: ModelSpec, z: ParallelSizes, seq: int, micro: int, vpp: int = 1, slots: int = 0,
                  sequence_parallel: bool = True, flash: bool = True, recompute: str = "none",
                  distributed_optimizer: bool = True, moment_bytes: float | tuple[float, float] = 8,
                  micro_batches: int = 1, backend: str = "gpu") -> Memory:
  """Weights, gradients, optimizer state and activations per GPU of one layout and recompute choice,
  with `micro_batches` micro-batches a step, as XLA compiles the step for `backend`."""
  weights, grads, optim, persistent = state_bytes(spec, z, distributed_optimizer, moment_bytes,
                                                  micro_batches=micro_batches, backend=backend)
  act = activation_bytes(spec, z, seq, micro, vpp, slots, sequence_parallel, flash, recompute)
  return Memory(weights=weights, gradients=grads, optimizer=optim, activations=act, persistent=persistent)
