"""Global batches through Grain: batch for step s is `dataset[s]`, so resuming is exact."""
from __future__ import annotations

import grain
import jax
import numpy as np

from moejax.config import num_microbatches
from moejax.data.corpus import SyntheticWindows, TokenWindows, pydoc_tokens


def make_dataset(cfg, num_devices: int) -> grain.MapDataset:
  """A Grain MapDataset of global batches shaped [num_micro, micro·dp, seq+1]."""
  t, d = cfg.train, cfg.data
  length = t.seq_length + 1
  if d.source == "pydoc":
    source = TokenWindows(pydoc_tokens(), length)
    if cfg.model.vocab_size < 257:
      raise ValueError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the byte tokenizer's 257")
  else:
    source = SyntheticWindows(cfg.model.vocab_size, length, d.seed)
  n_micro = num_microbatches(cfg, num_devices)
  ds = grain.MapDataset.source(source).shuffle(seed=d.seed).repeat()
  ds = ds.batch(t.global_batch_size, drop_remainder=True)
  return ds.map(lambda b: np.asarray(b, np.int32).reshape(n_micro, -1, length))


def device_batch(batch: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """Places a host global batch on the mesh (each process passes the whole batch)."""
  return jax.make_array_from_callback(batch.shape, sharding, lambda idx: batch[idx])
