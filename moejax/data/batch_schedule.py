"""Which samples each step reads: the global batch of every step, constant or ramped up.

Megatron grows the global batch with the samples consumed (its num-microbatches calculator):
`train.rampup_batch_size = (start, increment, samples)` (`--rampup-batch-size`, megatron-core 0.16)
steps from `start` up to `train.global_batch_size` by `increment`, each size for samples /
((global - start) / increment) samples; `train.step_batch_size_schedule = "0:768 250B:1536"`
(`--step-batch-size-schedule`, newer Megatron) sets each size from a threshold of tokens on (K, M, B, T
suffixes; samples = tokens // train.seq_length, as Megatron-LM counts them).
Both need sample-based training (`train.train_samples`, Megatron's rule): the number of steps follows
from the samples (Megatron's `update_train_iters`), and step k reads the `global_batch_size(k)`
records from `consumed(k)` on. Each batch size is its own compiled step (the micro-batch count is a
shape); Megatron's sizes only grow, so a run compiles each once.
"""
from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from moejax.config import ConfigError
from moejax.parallel.mesh import parallel_sizes

_SUFFIX = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}


def _count(text: str) -> int:
  """'250B' -> 250_000_000_000 (Megatron's schedule numbers: K, M, B, T suffixes)."""
  text = text.strip().upper()
  scale = _SUFFIX.get(text[-1:], 1)
  return int(float(text[:-1] if scale > 1 else text) * scale)


def parse_step_schedule(text: str, seq_length: int) -> tuple[tuple[int, int], ...]:
  """Megatron's `--step-batch-size-schedule` ("TOKENS:BATCH ...", commas allowed) as sorted
  (threshold in samples, global batch) pairs: Megatron-LM's training passes its sequence length, so
  each threshold counts tokens and becomes tokens // seq_length samples. ValueError on a malformed entry."""
  pairs = []
  for entry in text.replace(",", " ").split():
    if ":" not in entry:
      raise ValueError(f"train.step_batch_size_schedule entry {entry!r} is not THRESHOLD:BATCH_SIZE "
                       "(e.g. '0:768 250B:1536')")
    threshold, size = entry.split(":", 1)
    try:
      threshold, size = _count(threshold), _count(size)
    except ValueError:
      raise ValueError(f"train.step_batch_size_schedule entry {entry!r}: THRESHOLD and BATCH_SIZE must be numbers "
                       "with an optional K, M, B or T suffix") from None
    pairs.append((threshold // seq_length, size))
  return tuple(sorted(pairs))


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
  """The global batch of every step and the samples consumed before it (`of(cfg)` reads the config).

  `rampup` is (start, increment, samples), `thresholds` ((samples, batch), ...) from the step schedule;
  neither: every step takes `final` (train.global_batch_size)."""
  final: int
  rampup: tuple[int, int, int] | None = None
  thresholds: tuple[tuple[int, int], ...] | None = None
  train_samples: int | None = None
  train_iters_set: int | None = None

  @classmethod
  def of(cls, cfg) -> BatchSchedule:
    t = cfg.train
    rampup = tuple(int(v) for v in t.rampup_batch_size) if t.rampup_batch_size else None
    steps = parse_step_schedule(t.step_batch_size_schedule, t.seq_length) if t.step_batch_size_schedule else None
    return cls(t.global_batch_size, rampup, steps, t.train_samples, t.train_iters)

  @property
  def ramps(self) -> bool:
    return bool(self.rampup or self.thresholds)

  def size_at(self, consumed: int) -> int:
    """The global batch of a step that starts after `consumed` samples (Megatron's calculator's `update`)."""
    if self.rampup:
      start, increment, samples = self.rampup
      if consumed > samples:
        return self.final
      per_increment = samples / ((self.final - start) // increment)
      return start + int(consumed / per_increment) * increment
    if self.thresholds:
      return max((size for threshold, size in self.thresholds if consumed >= threshold),
                 default=self.thresholds[0][1])
    return self.final

  def _settled(self, consumed: int) -> bool:
    """Whether every step from `consumed` samples on takes `final`."""
    if self.rampup:
      return consumed > self.rampup[2]
    if self.thresholds:
      return consumed >= self.thresholds[-1][0]
    return True

  @property
  def _ramp(self) -> np.ndarray:
    """Samples consumed before each step of the ramp, and after its last (int64, length K + 1); walked
    once per schedule however many times the config is read (`_walk`)."""
    return _walk(self)

  def consumed(self, step: int) -> int:
    """Samples read before step `step` (counted from 0)."""
    k = len(self._ramp) - 1
    return int(self._ramp[min(step, k)]) + max(step - k, 0) * self.final

  def global_batch_size(self, step: int) -> int:
    return self.size_at(self.consumed(step))

  def sizes(self) -> list[int]:
    """Every global batch the run takes, ascending (each is a compiled step)."""
    return sorted({self.size_at(int(c)) for c in self._ramp} | {self.final})

  @property
  def train_iters(self) -> int:
    """The run's steps: train.train_iters, or from train.train_samples as Megatron's `update_train_iters`
    counts them (through the ramp while at most rampup's and the run's samples are consumed, then whole
    final batches; a step schedule runs until the samples are reached; a constant batch takes whole
    batches)."""
    if self.train_samples is None:
      return self.train_iters_set
    total, ramp = self.train_samples, self._ramp
    if self.rampup:  # the steps that start at most min(ramp-up samples, total) in, then whole batches
      steps = int(np.searchsorted(ramp, min(self.rampup[2], total), side="right"))
      return steps + max(total - self.consumed(steps), 0) // self.final
    if self.thresholds:  # the steps that start before `total`
      k = len(ramp) - 1
      return int(np.searchsorted(ramp, total)) if total <= ramp[k] else k - (-(total - int(ramp[k])) // self.final)
    return total // self.final

  def progress(self, count):
    """Samples consumed before optimizer step `count` (a traced int), in final global batches, as a
    float32: the unit moejax's learning-rate and weight-decay schedules count in (a constant batch: `count`
    itself)."""
    if not self.ramps:
      return jnp.asarray(count, jnp.float32)
    ramp = jnp.asarray(self._ramp / self.final, jnp.float32)
    k = len(self._ramp) - 1
    count = jnp.asarray(count, jnp.int32)
    return ramp[jnp.minimum(count, k)] + jnp.maximum(count - k, 0).astype(jnp.float32)

  def steps_within(self, records: int) -> int:
    """How many steps' batches `records` samples hold."""
    k = len(self._ramp) - 1
    if records < self._ramp[k]:
      return int(np.searchsorted(self._ramp, records, side="right")) - 1
    return k + (records - int(self._ramp[k])) // self.final


@functools.lru_cache(maxsize=16)
def _walk(schedule: BatchSchedule) -> np.ndarray:
  consumed, out = 0, [0]
  while not schedule._settled(consumed):
    consumed += schedule.size_at(consumed)
    out.append(consumed)
  return np.asarray(out, np.int64)


def problems(cfg, num_devices: int | None = None) -> list[str]:
  """Settings of the run's length and batch schedule that do not go together (Megatron's rules), and with
  `num_devices` every global batch the schedule takes not splitting into micro-batches over dp."""
  t, o = cfg.train, cfg.optim
  if (t.train_iters is None) == (t.train_samples is None):
    return ["train.train_iters and train.train_samples are both " + ("unset" if t.train_iters is None else "set") +
            ": give one (train.train_iters=None for sample-based training, Megatron's --train-samples)"]
  bad = []
  if t.train_samples is not None:
    if not isinstance(t.train_samples, int) or t.train_samples < 1:
      bad.append(f"train.train_samples={t.train_samples!r} must be a positive integer (or None: train.train_iters)")
    given = [k for k in ("lr_warmup_iters", "lr_decay_iters", "lr_wsd_decay_iters") if getattr(o, k)]
    bad += [f"optim.{k}={getattr(o, k)} counts steps, train.train_samples samples: set optim.{k}="
            f"{0 if k == 'lr_warmup_iters' else None} and optim.{k.replace('iters', 'samples')} (Megatron's "
            "sample-based training)" for k in given]
  else:
    given = [k for k in ("lr_warmup_samples", "lr_decay_samples", "lr_wsd_decay_samples") if getattr(o, k)]
    bad += [f"optim.{k}={getattr(o, k)} counts samples, which needs train.train_samples (and train.train_iters=None)"
            for k in given]
  if t.rampup_batch_size and t.step_batch_size_schedule:
    return bad + ["train.rampup_batch_size and train.step_batch_size_schedule are both set: give one"]
  if (t.rampup_batch_size or t.step_batch_size_schedule) and t.train_samples is None:
    key = "rampup_batch_size" if t.rampup_batch_size else "step_batch_size_schedule"
    bad.append(f"train.{key} needs sample-based training: set train.train_samples and train.train_iters=None "
               "(Megatron's rule: no batch-size ramp-up for iteration-based training)")
  bad += _rampup_problems(t) if t.rampup_batch_size else _step_schedule_problems(t)
  if bad or num_devices is None:
    return bad
  try:
    per_step = t.micro_batch_size * parallel_sizes(cfg, num_devices).dp
  except ConfigError:
    return []  # the layout's own problems, which moejax.parallel reports
  return [f"global batch {size} of the batch schedule is not divisible by train.micro_batch_size*dp={per_step}: "
          "change the schedule's sizes or the micro-batch" for size in BatchSchedule.of(cfg).sizes() if size % per_step]


def _rampup_problems(t) -> list[str]:
  ramp = t.rampup_batch_size
  if len(ramp) != 3 or not all(isinstance(v, int) for v in ramp):
    return [f"train.rampup_batch_size={ramp!r} must be three integers: (start batch, increment, ramp-up samples)"]
  start, increment, samples = ramp
  if not (0 < start < t.global_batch_size and increment > 0 and samples > 0):
    return [f"train.rampup_batch_size={tuple(ramp)} must start above 0 and below train.global_batch_size="
            f"{t.global_batch_size}, with a positive increment and ramp-up samples (no ramp: None)"]
  if (t.global_batch_size - start) % increment:
    return [f"train.rampup_batch_size={tuple(ramp)}: train.global_batch_size - start = "
            f"{t.global_batch_size - start} is not divisible by the increment {increment}"]
  return []


def _step_schedule_problems(t) -> list[str]:
  if not t.step_batch_size_schedule:
    return []
  key = f"train.step_batch_size_schedule={t.step_batch_size_schedule!r}"
  try:
    pairs = parse_step_schedule(t.step_batch_size_schedule, t.seq_length)
  except ValueError as e:
    return [str(e)]
  thresholds, sizes = [p[0] for p in pairs], [p[1] for p in pairs]
  if not pairs or thresholds[0] != 0:
    return [f"{key} must start with a threshold of 0 (the first batch size)"]
  if len(set(thresholds)) < len(thresholds):
    return [f"{key}: thresholds must differ by at least train.seq_length={t.seq_length} tokens (one sample)"]
  if any(b <= 0 for b in sizes) or sizes != sorted(sizes):
    return [f"{key}: batch sizes must be positive and never decrease (Megatron's rule)"]
  if sizes[-1] != t.global_batch_size:
    return [f"{key} ends at batch {sizes[-1]}: set train.global_batch_size={sizes[-1]} (the batch after the ramp)"]
  return []
