"""Memory per device: what the compiled step holds (`memory_report`), the activations a backward
pass keeps (`saved_activation_bytes`), and the weights/gradient/optimizer budget of a model from
its spec (`state_budget`, README's Mixtral table)."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re

import jax
import jax.numpy as jnp

from moejax.config import ModelSpec
from moejax.metrics.flops import num_params
from moejax.parallel.sharding import shard_bytes


def _bytes(abstract_tree, shardings, memory_kind: str | None = None) -> int:
  """Bytes of one device's shards of a tree, optionally only those in one memory kind."""
  return sum(shard_bytes(a, sh) for a, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings))
             if memory_kind is None or (sh.memory_kind or "device") == memory_kind)


def fmt_bytes(n: float) -> str:
  for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
    if abs(n) >= size:
      return f"{n / size:.3g} {unit}"
  return f"{int(n)} B"


def memory_report(compiled, abstract_state, state_shardings) -> str:
  """One line: the compiled step's per-device memory (XLA's `memory_analysis()`), its arguments
  split into params (masters and their compute copy) / optimizer state (device and pinned host)
  and the temporaries (activations, gradients and the gathered compute copy)."""
  m = compiled.memory_analysis()
  if m is None:
    return "memory per device: not reported by this backend"
  params = _bytes(abstract_state.params, state_shardings.params)
  if abstract_state.compute_params is not None:
    params += _bytes(abstract_state.compute_params, state_shardings.compute_params)
  opt_dev = _bytes(abstract_state.opt_state, state_shardings.opt_state, "device")
  opt_host = _bytes(abstract_state.opt_state, state_shardings.opt_state, "pinned_host")
  peak = compiled_bytes(m)
  host = f" + {fmt_bytes(opt_host)} in pinned host memory" if opt_host else ""
  host_temp = getattr(m, "host_temp_size_in_bytes", 0)
  offload = f"; {fmt_bytes(host_temp)} of activations offloaded to host" if host_temp else ""
  return (f"memory per device: params {fmt_bytes(params)}, optimizer state {fmt_bytes(opt_dev)}{host}, "
          f"activations/gradients/temporaries {fmt_bytes(m.temp_size_in_bytes)} "
          f"(arguments {fmt_bytes(m.argument_size_in_bytes)}, outputs {fmt_bytes(m.output_size_in_bytes)}, "
          f"aliased {fmt_bytes(m.alias_size_in_bytes)}; total {fmt_bytes(peak)}){offload}")


def compiled_bytes(m) -> int:
  """Device bytes a compiled step holds at once, from its `memory_analysis()` `m`: arguments +
  temporaries + outputs, less the outputs aliased onto donated arguments."""
  return m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes


def saved_activation_bytes(f, *args) -> tuple[int, int]:
  """(device, pinned host) bytes of the values `jax.grad(f)` keeps from the forward for the backward
  pass, arguments not counted: traced only (no compile), so it works at any width. Read from
  `jax.ad_checkpoint.print_saved_residuals`, the public form of that list."""
  from jax.ad_checkpoint import print_saved_residuals
  buf = io.StringIO()
  with contextlib.redirect_stdout(buf):
    print_saved_residuals(f, *args)
  device = host = 0
  for line in buf.getvalue().splitlines():
    m = re.match(r"(\w+?)(<host>)?\[([\d,]*)\]", line)
    if m is None or "from the argument" in line:
      continue
    n = math.prod(int(d) for d in m.group(3).split(",") if d) * _ITEMSIZE[m.group(1)]
    if m.group(2):
      host += n
    else:
      device += n
  return device, host


_ITEMSIZE = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "i64": 8, "i32": 4, "u32": 4, "i8": 1, "u8": 1, "bool": 1}


def routed_expert_params(spec: ModelSpec) -> int:
  """Parameters of the routed experts (sharded over ep·etp, their state over edp)."""
  if spec.moe.num_experts is None:
    return 0
  per_layer = spec.moe.num_experts * 3 * spec.hidden_size * spec.moe_ffn_hidden_size
  return per_layer * sum(spec.moe_pattern)


@dataclasses.dataclass(frozen=True)
class StateBudget:
  """Bytes per device of the train state and the step's gradients (activations not included)."""
  master_params: float
  optimizer: float
  gradients: float
  compute_copy: float

  @property
  def total(self) -> float:
    return self.master_params + self.optimizer + self.gradients + self.compute_copy


def state_budget(spec: ModelSpec, tp: int = 1, ep: int = 1, etp: int = 1, dp: int = 1, edp: int = 1,
                 distributed_optimizer: bool = False, moment_bytes: int = 8) -> StateBudget:
  """moejax's per-device bytes for fp32 master params, Adam moments (fp32) and gradients.

  Non-expert weights count as sharded over tp (norm scales, a rounding error, too), routed experts
  over ep·etp. A weight kept whole per device (no distributed optimizer, or experts at edp=1):
  master, both moments, an fp32 gradient and, when `model.dtype` is narrower, the master's copy in
  it (TrainState.compute_params). A weight the distributed optimizer shards over its data axes
  (dp, experts edp): master and moments over them, the step's compute copy (cast on the shard and
  gathered whole) and one micro-batch's gradients in `model.dtype`, and the fp32 gradient sum over
  the shards.
  `moment_bytes`: both Adam moments of one weight (8 in fp32, 4 with bf16 moments).
  """
  experts = routed_expert_params(spec)
  low = jnp.dtype(spec.dtype).itemsize
  copy = low if low < jnp.dtype(spec.params_dtype).itemsize else 0  # bytes of the kept copy per weight
  out = StateBudget(0.0, 0.0, 0.0, 0.0)
  for n, local, data in ((num_params(spec) - experts, tp, dp), (experts, ep * etp, edp)):
    whole = n / local
    if not distributed_optimizer or data == 1:
      part = StateBudget(4 * whole, moment_bytes * whole, 4 * whole, copy * whole)
    else:
      part = StateBudget(4 * whole / data, moment_bytes * whole / data, low * whole + 4 * whole / data,
                         low * whole)
    out = StateBudget(*(a + b for a, b in zip(dataclasses.astuple(out), dataclasses.astuple(part))))
  return out
