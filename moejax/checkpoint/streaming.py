"""Orbax weights-only checkpoints written and read block by block, so host memory stays near one
block (a layer's tensor, or one expert's) however large the model: the checkpoint converter
(moejax/convert) streams Hugging Face shards through it.

Why by hand: Orbax saves a pytree of materialised arrays, and our stacked leaves ([layers, ...],
[layers, experts, ...]) reach hundreds of GB; Orbax's partial saves add whole leaves, not parts
of one. So a `StreamedArray` leaf carries its shape, dtype and a generator of blocks, and
`StreamedArrayHandler` (an Orbax TypeHandler) writes each block into the leaf's TensorStore
array with Orbax's own write spec, the block shape as its chunk shape. The result is an ordinary
Orbax PyTree checkpoint: `load_weights` restores it into any mesh, casting to the target dtype.
`LeafReader` reads blocks of a saved leaf back the same way.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath

from moejax.checkpoint.manager import PARAMS_ITEM

Index = tuple[slice, ...]


@dataclasses.dataclass
class StreamedArray:
  """A leaf to write: `blocks()` yields (index into the leaf, block) covering it exactly once."""
  shape: tuple[int, ...]
  dtype: np.dtype
  block_shape: tuple[int, ...]
  blocks: Callable[[], Iterator[tuple[Index, np.ndarray]]]

  @property
  def ndim(self) -> int:
    return len(self.shape)

  @property
  def size(self) -> int:
    return int(np.prod(self.shape))


class StreamedArrayHandler(ocp.type_handlers.NumpyHandler):
  """Writes a StreamedArray block by block (saved as a numpy array: restored like any other)."""

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)

  async def serialize(self, values, infos, args=None):
    args = args or [ocp.type_handlers.SaveArgs()] * len(values)
    for value, info, arg in zip(values, infos, args):  # one leaf, one block at a time
      await info.await_path_creation()
      if jax.process_index() != 0:
        continue
      tspec = ocp.type_handlers.get_json_tspec_write(
          info, use_ocdbt=info.is_ocdbt_checkpoint, global_shape=value.shape, local_shape=value.block_shape,
          dtype=value.dtype, process_index=jax.process_index(), arg=arg)
      array = await ts.open(ts.Spec(tspec), create=True, open=True, context=info.ts_context)
      for index, block in value.blocks():
        await array[index].write(np.asarray(block, value.dtype).reshape(array[index].shape))
    return []


def save_streamed(directory: str, tree, item: str = PARAMS_ITEM) -> None:
  """Writes a pytree of StreamedArray leaves as the Orbax checkpoint DIR/<item> (atomic)."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (StreamedArray, StreamedArrayHandler()), (jax.Array, ocp.type_handlers.ArrayHandler()))
  handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry)
  with ocp.Checkpointer(handler) as ckpt:
    ckpt.save(os.path.join(os.path.abspath(directory), item), args=ocp.args.PyTreeSave(tree), force=True)


class LeafReader:
  """Reads blocks of the leaves of a saved Orbax checkpoint DIR/<item> without loading whole leaves."""

  def __init__(self, directory: str, item: str = PARAMS_ITEM):
    self.path = epath.Path(os.path.abspath(directory)) / item
    with ocp.StandardCheckpointer() as ckpt:
      meta = ckpt.metadata(self.path).item_metadata
    self._use_zarr3 = meta.use_zarr3
    self.tree = meta.tree                       # {key: ... ArrayMetadata(name, shape, dtype)}
    self._open: dict[str, ts.TensorStore] = {}
    self._context = ocp.type_handlers.get_ts_context(use_ocdbt=True)

  def _array(self, name: str):
    if name not in self._open:
      info = ocp.type_handlers.ParamInfo(name=name, parent_dir=self.path, is_ocdbt_checkpoint=True,
                                         use_zarr3=self._use_zarr3, ts_context=self._context)
      spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
      self._open[name] = ts.open(ts.Spec(spec), open=True, context=self._context).result()
    return self._open[name]

  def read(self, name: str, index: Index = ()) -> np.ndarray:
    """Leaf `name` (Orbax's dotted key path) at `index`, as a numpy array in its saved dtype."""
    return self._array(name)[index].read().result()
