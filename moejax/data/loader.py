"""Global batches through Grain: batch for step s is `dataset[s]`, so resuming is exact (also under a
batch-size ramp-up: each step's batch follows from the samples before it, moejax/data/batch_schedule.py).

Sources: the bundled pydoc text, synthetic tokens, or Megatron `.bin`/`.idx` datasets
(`data.source='indexed'`: Megatron's GPT sample index, split and blending; see gpt_dataset.py).
"""
from __future__ import annotations

import grain
import jax
import numpy as np

from moejax.data.batch_schedule import BatchSchedule
from moejax.data.blend import WindowSource, build_gpt_datasets
from moejax.data.corpus import SyntheticWindows, TokenWindows, pydoc_tokens
from moejax.data.gpt_dataset import GPTDatasetConfig
from moejax.parallel.mesh import num_microbatches


def make_dataset(cfg, num_devices: int, sharding=None) -> grain.MapDataset:
  """A Grain MapDataset of global batches shaped [num_micro, micro·dp, seq+1].

  With several processes and the batch `sharding`, each process reads only the rows its own
  devices hold: [num_micro, rows of this process, seq+1] (see `process_rows`).
  """
  t, d = cfg.train, cfg.data
  length = t.seq_length + 1
  if d.source == "pydoc":
    source = TokenWindows(pydoc_tokens(), length)
    if cfg.model.vocab_size < 257:
      raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the byte tokenizer's 257")
  elif d.source == "indexed":
    return _batches(WindowSource(gpt_datasets(cfg)[0]), cfg, num_devices, sharding, ramp=True)
  else:
    source = SyntheticWindows(cfg.model.vocab_size, length, d.seed)
  ds = grain.MapDataset.source(source).shuffle(seed=d.seed).repeat()
  return _batches(ds, cfg, num_devices, sharding, ramp=True)


def make_eval_dataset(cfg, num_devices: int, sharding=None) -> grain.MapDataset | None:
  """Validation batches (None without evaluation): evaluation k (at step k·eval_interval,
  k = 1, 2, ...) reads batches [(k-1)·eval_iters, k·eval_iters), fresh ones each time as in
  Megatron, and the same ones after a resume."""
  if not cfg.train.eval_interval:
    return None
  return _batches(WindowSource(gpt_datasets(cfg)[1]), cfg, num_devices, sharding)


def _batches(source, cfg, num_devices: int, sharding=None, ramp: bool = False) -> grain.MapDataset:
  """Consecutive records as global batches [num_micro, micro·dp, seq+1] (the GPT index is
  already shuffled; Megatron's sampler reads it in order): record c + m·(micro·dp) + r is
  row r of micro-batch m of the step that starts after c records (s·gbs at a constant batch; `ramp`:
  the train split's batch schedule, moejax/data/batch_schedule.py)."""
  t = cfg.train
  gbs, length = t.global_batch_size, t.seq_length + 1
  n_micro = num_microbatches(cfg, num_devices)
  ds = source if isinstance(source, grain.MapDataset) else grain.MapDataset.source(source)
  schedule = BatchSchedule.of(cfg) if ramp else BatchSchedule(gbs)
  several = sharding is not None and jax.process_count() > 1
  if schedule.ramps or several:
    rows = process_rows(sharding, (n_micro, gbs // n_micro, length)) if several else np.arange(gbs // n_micro)
    return local_batches(ds, schedule, gbs // n_micro, rows)
  ds = ds.batch(gbs, drop_remainder=True)
  return ds.map(lambda b: np.asarray(b, np.int32).reshape(n_micro, -1, length))


def process_rows(sharding, global_shape, devices=None) -> np.ndarray:
  """Rows of the batch axis (axis 1) that `devices` (default: this process's) hold."""
  devices = set(sharding.addressable_devices if devices is None else devices)
  rows = set()
  for dev, index in sharding.devices_indices_map(tuple(global_shape)).items():
    if dev in devices:
      rows.update(range(*index[1].indices(global_shape[1])))
  return np.asarray(sorted(rows), dtype=np.int64)


def local_batches(records: grain.MapDataset, schedule: BatchSchedule, per_micro: int,
                  rows: np.ndarray) -> grain.MapDataset:
  """Per step, only the given rows of each of its micro-batches of `per_micro` (micro·dp) records:
  [the step's batch / per_micro, len(rows), seq+1]."""

  def load(step):
    n_micro, first = schedule.global_batch_size(int(step)) // per_micro, schedule.consumed(int(step))
    offsets = (np.arange(n_micro)[:, None] * per_micro + rows[None, :]).ravel()
    recs = [np.asarray(records[first + int(o)], np.int32) for o in offsets]
    return np.stack(recs).reshape(n_micro, len(rows), -1)

  return grain.MapDataset.range(schedule.steps_within(len(records))).map(load)


def used_splits(cfg) -> tuple[bool, bool, bool]:
  """Which of train/valid/test a run reads: train always, valid when it evaluates, test never."""
  return True, bool(cfg.train.eval_interval), False


def split_sizes(cfg) -> tuple[int, int, int]:
  """Samples each split must hold (Megatron's formula): train for every step (train.train_samples, or
  what the steps read where Megatron's step count overruns them), valid for every evaluation including
  one at the end, test for one evaluation."""
  t, schedule = cfg.train, BatchSchedule.of(cfg)
  gbs, iters, steps = t.global_batch_size, max(t.eval_iters, 1), schedule.train_iters
  evals = steps // t.eval_interval + 1 if t.eval_interval else 1
  return max(t.train_samples or 0, schedule.consumed(steps)), evals * iters * gbs, iters * gbs


def gpt_datasets(cfg):
  """Train/valid/test GPT datasets over `data.path` (blended when several prefixes)."""
  t, d = cfg.train, cfg.data
  config = GPTDatasetConfig(sequence_length=t.seq_length, random_seed=d.seed,
                            cache_dir=d.cache_dir or None)
  return build_gpt_datasets(list(d.path), d.split, split_sizes(cfg), config,
                            vocab_size=cfg.model.vocab_size, used=used_splits(cfg))


def device_batch(batch: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """Places a batch on the mesh: the whole global batch with one process, this process's rows
  (from `make_dataset(..., sharding)`) with several."""
  if jax.process_count() > 1:
    return jax.make_array_from_process_local_data(sharding, batch)
  return jax.make_array_from_callback(batch.shape, sharding, lambda idx: batch[idx])
