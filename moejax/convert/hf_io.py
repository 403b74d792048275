"""Hugging Face safetensors checkpoints, one tensor at a time: a reader over `model.safetensors`
or the shards of `model.safetensors.index.json`, and a writer that fills shards up to a size."""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX = "model.safetensors.index.json"
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64}
SINGLE = "model.safetensors"


class ConversionError(ValueError):
  """A checkpoint or config the converter cannot take, in one line naming the option."""


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


class HFCheckpoint:
  """Tensor names → shard files of an HF checkpoint directory; `get` reads one tensor."""

  def __init__(self, directory: str):
    self.directory = directory
    if os.path.exists(os.path.join(directory, INDEX)):
      self.files = dict(read_json(os.path.join(directory, INDEX))["weight_map"])
    elif os.path.exists(os.path.join(directory, SINGLE)):
      with safe_open(os.path.join(directory, SINGLE), "flax") as f:
        self.files = {k: SINGLE for k in f.keys()}
    else:
      raise ConversionError(f"--hf {directory}: no {SINGLE} or {INDEX} (only safetensors checkpoints are read)")
    self._handles = {}

  def __contains__(self, name: str) -> bool:
    return name in self.files

  def _handle(self, name: str):
    file = self.files[name]
    if file not in self._handles:
      self._handles[file] = safe_open(os.path.join(self.directory, file), "flax")
    return self._handles[file]

  def dtype(self, name: str) -> np.dtype:
    """A tensor's dtype from its header, without reading it."""
    return np.dtype(_DTYPES[self._handle(name).get_slice(name).get_dtype()])

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handle(name).get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    """One tensor as numpy, bit for bit (bfloat16 through ml_dtypes; read via the flax backend,
    as safetensors' numpy backend cannot load bfloat16)."""
    return np.asarray(self._handle(name).get_tensor(name))


def write_sharded(directory: str, tensors: Iterable[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
                  max_shard_bytes: int = 5 * 2**30) -> None:
  """Writes (name, shape, dtype, producer) in order into shards of at most `max_shard_bytes`
  (one tensor may exceed it), producing each tensor only when its shard is written; a single
  shard is `model.safetensors`, several get `model.safetensors.index.json`."""
  tensors = list(tensors)
  shards, size = [[]], 0
  for t in tensors:
    nbytes = int(np.prod(t[1])) * np.dtype(t[2]).itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += nbytes
  os.makedirs(directory, exist_ok=True)
  n = len(shards)
  names = [SINGLE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  weight_map, total = {}, 0
  for fname, shard in zip(names, shards):
    arrays = {}
    for name, shape, dtype, produce in shard:
      a = np.ascontiguousarray(produce())
      if a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        raise ConversionError(f"{name}: produced {a.dtype}{list(a.shape)}, expected {np.dtype(dtype)}{list(shape)}")
      arrays[name] = a
      weight_map[name] = fname
      total += a.nbytes
    save_file(arrays, os.path.join(directory, fname), metadata={"format": "pt"})
    del arrays
  if n > 1:
    with open(os.path.join(directory, INDEX), "w") as f:
      json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
