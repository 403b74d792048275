"""Per-step metrics to WORKDIR/metrics.jsonl, TensorBoard events and the console."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from moejax.metrics.moe_load import log_to_tensorboard

CONSOLE_KEYS = ("loss", "lm_loss", "mtp_loss", "aux_loss", "grad_norm", "num_zeros_in_grad", "params_norm",
                "max_attention_logit", "lr", "global_batch_size", "tokens_per_sec", "tflops_per_device", "mfu")


class MetricsWriter:
  """Appends one row per step, from the primary process only (process 0 of a multi-process run;
  others write nothing). A run starting at `start_step` (a resume) first cuts the rows after it
  that an earlier attempt left (it crashed after its last checkpoint), and writes a new
  TensorBoard event file telling TensorBoard to purge the events from step start_step + 1 on, so
  every step appears once in both."""

  def __init__(self, workdir: str, tensorboard: bool = True, total_steps: int | None = None, start_step: int = 0,
               primary: bool = True):
    self.primary = primary
    self._jsonl = self._tb = None
    self.total_steps = total_steps
    if not primary:
      return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, "metrics.jsonl")
    _cut_after(path, start_step)
    self._jsonl = open(path, "a", buffering=1)
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1,
                               filename_suffix=f".{os.getpid()}.{time.time_ns()}")

  def write(self, step: int, metrics: dict, console: bool = False) -> None:
    if not self.primary:
      return
    record = {"step": step, **metrics}
    self._jsonl.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and v is not None:
          self._tb.add_scalar(k, v, step)
      if "moe_tokens_per_expert" in metrics:  # logging.moe_per_layer: load histograms, heatmap at log steps
        log_to_tensorboard(self._tb, step, metrics["moe_tokens_per_expert"], image=console)
    if console:
      parts = [f"step {step}" + (f"/{self.total_steps}" if self.total_steps else "")]
      for k in CONSOLE_KEYS:
        v = metrics.get(k)
        if v is None:
          continue
        if isinstance(v, float):
          v = f"{v:.0f}" if k == "num_zeros_in_grad" else f"{v:.3g}"  # a count: every digit
        parts.append(f"{k} {v}")
      print(" | ".join(parts), file=sys.stderr, flush=True)

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _cut_after(path: str, step: int) -> None:
  """Keeps the rows of metrics.jsonl up to `step` (atomically: a crash leaves the old file or the new)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  kept = [ln for ln in lines if ln.strip() and _row_step(ln) is not None and _row_step(ln) <= step]
  if len(kept) == len(lines):
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _row_step(line: str) -> int | None:
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # a line cut short by a crash


MOE_ARRAY_KEYS = ("tokens_per_expert", "moe_dropped_fraction", "moe_losses")


def moe_records(metrics: dict, per_layer: bool = False) -> dict:
  """Scalars for the MoE statistics of one step (arrays [L, ...] over the MoE layers).

  Always: `moe_load_imbalance` (max/mean tokens per expert, averaged over layers),
  `moe_load_imbalance_max` (worst layer), the mean over layers of every logged
  loss (`load_balancing_loss`, `z_loss`, ... each / its coeff, as Megatron logs
  them, as `moe/NAME`) and `moe_dropped_fraction`. With `per_layer`: the same per layer as
  `moe/layer_{i}/...` and the counts as `moe_tokens_per_expert` (jsonl only).
  """
  counts_LE = np.asarray(metrics.get("tokens_per_expert", np.zeros((0, 0))), np.float64)
  if counts_LE.size == 0:
    return {"moe_load_imbalance": None}
  imb_L = counts_LE.max(-1) / np.maximum(counts_LE.mean(-1), 1e-9)
  out = {"moe_load_imbalance": float(imb_L.mean()), "moe_load_imbalance_max": float(imb_L.max())}
  logs = {k: np.asarray(v, np.float64) for k, v in metrics.get("moe_losses", {}).items()}
  dropped_L = np.asarray(metrics.get("moe_dropped_fraction", np.zeros(len(imb_L))), np.float64)
  out.update({f"moe/{name}": float(v.mean()) for name, v in logs.items()})
  out["moe_dropped_fraction"] = float(dropped_L.mean())
  if per_layer:
    for i in range(len(imb_L)):
      out[f"moe/layer_{i}/load_imbalance"] = float(imb_L[i])
      out[f"moe/layer_{i}/dropped_fraction"] = float(dropped_L[i])
      for name, v in logs.items():
        out[f"moe/layer_{i}/{name}"] = float(v[i])
    out["moe_tokens_per_expert"] = counts_LE.tolist()
  return out
