"""Orbax checkpoints: the train state of a run (atomic, async, restorable into any mesh), and
weights alone (`save_params`/`load_params`: converted or exported checkpoints, new runs from them).

Orbax writes each step to a temporary directory and renames it when complete,
so a crash or SIGTERM mid-save leaves the previous checkpoint loadable.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

PARAMS_ITEM = "params"
MOE_STATE_ITEM = "moe_state"  # beside the weights when they come with router state (an expert bias)


def _target(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def save_params(directory: str, params, moe_state=None) -> None:
  """Writes a weights-only checkpoint: DIR/params (an Orbax pytree, atomic), and DIR/moe_state
  when given a non-empty `moe_state` (the expert biases of aux-loss-free routing)."""
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(os.path.abspath(directory), PARAMS_ITEM), params, force=True)
  if moe_state:
    save_moe_state(directory, moe_state)


def save_moe_state(directory: str, moe_state) -> None:
  """Writes DIR/moe_state (an Orbax pytree, atomic)."""
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(os.path.join(os.path.abspath(directory), MOE_STATE_ITEM), moe_state, force=True)


def load_params(directory: str, abstract_params, shardings):
  """Reads DIR/params into `shardings` (any mesh layout)."""
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(os.path.join(os.path.abspath(directory), PARAMS_ITEM), _target(abstract_params, shardings))


def load_moe_state(directory: str, abstract_moe_state, shardings):
  """Reads DIR/moe_state into `shardings`, or None when the weights came without one."""
  path = os.path.join(os.path.abspath(directory), MOE_STATE_ITEM)
  if not abstract_moe_state or not os.path.isdir(path):
    return None
  with ocp.StandardCheckpointer() as ckpt:
    return ckpt.restore(path, _target(abstract_moe_state, shardings))


class CheckpointManager:
  def __init__(self, workdir: str, save_interval: int, max_to_keep: int, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=save_interval, max_to_keep=max_to_keep,
        enable_async_checkpointing=async_save, create=True)
    self._mngr = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state: Any, meta: dict, force: bool = False) -> bool:
    return self._mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, abstract: Any, shardings: Any, step: int | None = None):
    """Restores into `shardings` (which may be another mesh than the one saved from)."""
    step = self._mngr.latest_step() if step is None else step
    out = self._mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_target(abstract, shardings)), meta=ocp.args.JsonRestore()))
    return out.state, out.meta

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()
