"""Per-step metrics to WORKDIR/metrics.jsonl, TensorBoard events and the console."""
from __future__ import annotations

import json
import os
import sys

CONSOLE_KEYS = ("loss", "lm_loss", "aux_loss", "grad_norm", "lr", "tokens_per_sec", "tflops_per_device", "mfu")


class MetricsWriter:
  def __init__(self, workdir: str, tensorboard: bool = True, total_steps: int | None = None):
    os.makedirs(workdir, exist_ok=True)
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", buffering=1)
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.total_steps = total_steps

  def write(self, step: int, metrics: dict, console: bool = False) -> None:
    record = {"step": step, **metrics}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and v is not None:
          self._tb.add_scalar(k, v, step)
    if console:
      parts = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
      for k in CONSOLE_KEYS:
        v = metrics.get(k)
        if v is None:
          continue
        parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
      print(" | ".join(parts), file=sys.stderr, flush=True)

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
