"""A jax.profiler trace of chosen train steps (Megatron's --profile-step-start/--profile-step-end).

The trace of the steps in [start, end) (counted from 0, as Megatron's iteration) goes to
DIR/plugins/profile/<run>/, with the compiled step's HLO beside it (`DIR/step.hlo.txt`):
`tensorboard --logdir DIR` (Profile tab, with tensorboard-plugin-profile) or XProf show the
timeline, and `python benchmarks/profile_breakdown.py DIR --steps N` sums the device time by what
the kernels compute. The train loop traces into WORKDIR/profile; only process 0 traces.
"""
from __future__ import annotations

import os
import sys

import jax


class StepProfiler:
  """Starts the trace before step `start` and stops it after step `end - 1` (or at close())."""

  def __init__(self, directory: str, start: int, end: int, enabled: bool = True, compiled=None):
    self.dir = directory
    self.start, self.end = start, end
    self.enabled = enabled and jax.process_index() == 0
    self.compiled = compiled
    self.tracing, self.first, self.last = False, start, start

  def before(self, step: int) -> None:
    """Call before running step `step` (0-based): starts the trace at `start`."""
    if self.enabled and not self.tracing and self.start <= step < self.end:
      os.makedirs(self.dir, exist_ok=True)
      if self.compiled is not None:
        with open(os.path.join(self.dir, "step.hlo.txt"), "w") as f:
          f.write(self.compiled.as_text())
      jax.profiler.start_trace(self.dir)
      self.tracing = True
      self.first = step

  def after(self, step: int) -> None:
    """Call once step `step` has finished (its metrics fetched): stops the trace after `end - 1`."""
    self.last = step
    if self.tracing and step + 1 >= self.end:
      self.close()

  def close(self) -> None:
    if self.tracing:
      jax.profiler.stop_trace()
      self.tracing = False
      print(f"profile of steps {self.first}..{self.last} written to {self.dir} (tensorboard --logdir "
            f"{self.dir}; python benchmarks/profile_breakdown.py {self.dir} --steps {self.last - self.first + 1})",
            file=sys.stderr)
