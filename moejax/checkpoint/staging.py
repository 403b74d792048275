"""A pytree of device arrays copied to host memory a block at a time, paced: the async save's
device-to-host copy.

Written by hand because neither Orbax nor JAX paces its transfers, and on JAX 0.11-0.12 with
PJRT's GPU client a device-to-host copy runs serialized with the kernels of the training step
that follows it: Orbax copying a 13 GB train state at once held a step up by ~220 ms on an H200
(benchmarks/checkpoint_stall.py, RESULTS.md). Here each array is copied in row blocks of at most
`block_bytes` (through pinned host memory where the device has it), with a pause after each block
that keeps the average rate near `rate` bytes/s (a tenth of PCIe Gen5's); a training step then
waits for one block (~5 ms) at most, and 13 GB reach the host in a few seconds. The result is numpy
arrays, which Orbax writes as they are and restores into any sharding.
"""
from __future__ import annotations

import functools
import time

import jax
import numpy as np
from jax.sharding import make_single_device_sharding

from moejax.parallel.sharding import has_pinned_host

BLOCK_BYTES = 256 << 20  # ~5 ms over PCIe Gen5
RATE = 5e9  # bytes/s on average


def can_stage(tree) -> bool:
  """Whether this process holds every element of `tree` (one process: it can build whole arrays).
  Takes arrays or ShapeDtypeStructs with shardings."""
  return all(x.sharding.is_fully_addressable for x in jax.tree.leaves(tree) if hasattr(x, "sharding"))


def warm_up(devices, block_bytes: int = BLOCK_BYTES) -> None:
  """Has one block of pinned host memory per device allocated and freed, so that the allocator
  holds it for the saves: allocating pinned memory holds the device up while it lasts (about
  0.7 s per GB on an H200), better at start than during the first save."""
  for d in devices:
    if has_pinned_host(d):
      block = jax.device_put(np.zeros(block_bytes, np.uint8), make_single_device_sharding(d, memory_kind="pinned_host"))
      block.block_until_ready().delete()


def to_host(tree, block_bytes: int = BLOCK_BYTES, rate: float = RATE):
  """`tree` with every jax.Array replaced by a numpy copy, made block by block (see the module doc)."""
  return jax.tree.map(lambda x: _array_to_host(x, block_bytes, rate) if isinstance(x, jax.Array) else x, tree)


def _copy_block(block, device, out, rate: float) -> None:
  """Copies `block` into `out`, then pauses for its bytes at `rate` (a block's copy may first wait
  for the training step in flight, so its own duration says little)."""
  if has_pinned_host(device):
    block = jax.device_put(block, make_single_device_sharding(device, memory_kind="pinned_host"))
  out[...] = np.asarray(block)
  time.sleep(out.nbytes / rate)


@functools.partial(jax.jit, static_argnames="rows")
def _rows(x, start, rows: int):
  return jax.lax.dynamic_slice_in_dim(x, start, rows, axis=0)


def _array_to_host(x: jax.Array, block_bytes: int, rate: float) -> np.ndarray:
  if x.ndim == 0:
    return np.asarray(x)
  out = np.empty(x.shape, x.dtype)
  done = set()
  for shard in x.addressable_shards:  # each distinct shard once (replicas hold the same values)
    key = tuple((s.start, s.stop) for s in shard.index)
    if key in done:
      continue
    done.add(key)
    data, dst = shard.data, out[shard.index]  # basic slicing: a view of `out`
    n = data.shape[0]
    per = max(1, block_bytes // max(1, data.nbytes // max(1, n)))
    if per >= n:
      _copy_block(data, shard.device, dst, rate)
      continue
    for start in range(0, n, per):
      rows = min(per, n - start)
      _copy_block(_rows(data, start, rows), shard.device, dst[start:start + rows], rate)
  return out
