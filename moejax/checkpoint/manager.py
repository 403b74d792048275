"""Orbax checkpoints: the train state of a run (atomic, async, verified, restorable into any mesh),
and weights alone (`save_params`/`load_weights`: converted or exported checkpoints, new runs from
them or from another run's checkpoints).

Orbax writes each step to a temporary directory and renames it when complete, so a crash or
SIGTERM mid-save leaves the previous checkpoint loadable. On top of Orbax:

- verification: each save records per-array checksums (moejax/checkpoint/checksum.py) in the same
  step directory (item `checksums`); restore recomputes them on the restored arrays and checks
  they are finite. A checkpoint failing any check (or unreadable) is reported in one line, moved
  aside to `checkpoints/<step>.corrupt` (never deleted) and the next older one is tried;
- a non-finite state is never saved;
- retention keeps the last `max_to_keep`, every `keep_interval`-th, and the checkpoint this run
  was restored from (the last one known to pass verification). Orbax removes a local step
  directory file by file, so a crash in the middle leaves a half-removed checkpoint under the
  step's own name, which Orbax then lists as complete; so Orbax renames old checkpoints into
  `checkpoints/deleted/` instead (atomic), and the manager empties that directory at each save
  and at close;
- a checkpoint whose arrays do not fit the config is refused in one line naming the keys; arrays
  saved in another dtype than the config's (a changed model.params_dtype or Adam moment dtype) are
  verified as saved, then cast.

The async save (benchmarks/checkpoint_stall.py measures it): at a save step the training thread
only dispatches an on-device copy of the state (one pass over it in device memory). A background
thread then computes the copy's checksums (two uint32 per array) and finiteness on the devices,
fetches those few bytes, copies the state to host memory in paced blocks (moejax/checkpoint/
staging.py: a device-to-host copy holds up the training step's kernels, so it goes a little at a
time; with several processes Orbax copies each one's shards at once instead) and runs Orbax's
save; Orbax writes and commits the files in its own background thread. The step's metrics live in
pinned host memory on GPUs (`moejax.parallel.sharding.host_replicated`), so the loop's per-step
fetch does not queue behind those device-to-host copies.
"""
from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from moejax.checkpoint import checksum, staging
from moejax.config import RunError

PARAMS_ITEM = "params"
MOE_STATE_ITEM = "moe_state"  # beside the weights when they come with router state (an expert bias)
CORRUPT = ".corrupt"
TRASH = "deleted"  # retention renames old step directories into checkpoints/deleted/


class Damaged(Exception):
  """A checkpoint that cannot be read or fails verification; the message says what is wrong."""


def _target(abstract, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def _saved(tree):
  """The part of a state that checkpoints hold: `tree.checkpointed()` where the state defines it
  (moejax.train.state.TrainState leaves out its compute copy, derived from the masters), else
  the tree itself. save, prepare and restore all go through it, so callers pass whole states."""
  checkpointed = getattr(tree, "checkpointed", None)
  return tree if checkpointed is None else checkpointed()


def _short(e: Exception) -> str:
  """The first sentence of an exception, without TensorStore's specs and slice tuples."""
  text = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
  text = re.sub(r": \(slice\(.*", "", text)
  return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


def misfit(saved_tree, abstract, prefix: str = "") -> str | None:
  """None when the saved arrays (a metadata tree) have the names and shapes of `abstract`, else
  the differing keys, weights first, at most three named."""
  saved = {n: tuple(m.shape) for n, m in zip(checksum.leaf_names(saved_tree), jax.tree.leaves(saved_tree))}
  if prefix:
    saved = {n[len(prefix) + 1:]: s for n, s in saved.items() if n.startswith(prefix + ".")}
  want = {n: tuple(a.shape) for n, a in zip(checksum.leaf_names(abstract), jax.tree.leaves(abstract))}
  diffs = []
  for name in sorted(saved.keys() | want.keys(), key=lambda n: (not n.startswith("params"), n)):
    full = f"{prefix}.{name}" if prefix else name
    if name not in want:
      diffs.append(f"{full} is only in the checkpoint")
    elif name not in saved:
      diffs.append(f"{full} is not in the checkpoint")
    elif saved[name] != want[name]:
      diffs.append(f"{full} is {list(saved[name])} there, {list(want[name])} in the config")
  if not diffs:
    return None
  stacked = lambda names: any(".decoder.segment_" in f".{n}" for n in names)  # noqa: E731
  per_layer = lambda names: any(".decoder.layer_" in f".{n}" for n in names)  # noqa: E731
  if stacked(saved) != stacked(want) and per_layer(saved) != per_layer(want):
    return (f"the checkpoint holds the decoder's layers {'stacked' if stacked(saved) else 'one by one'} "
            f"(model.scan_layers={stacked(saved)}) and the config wants them "
            f"{'stacked' if stacked(want) else 'one by one'} (model.scan_layers={stacked(want)})")
  return "; ".join(diffs[:3]) + (f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else "")


@contextlib.contextmanager
def _quiet_stderr():
  """Holds back what Orbax and TensorStore print while reading a checkpoint (a damaged one makes
  every pending array read print its own traceback from background threads) and replays it only
  if the read succeeded: a damaged checkpoint is reported in one line by the caller."""
  sys.stderr.flush()
  saved_fd, saved_hook = os.dup(2), sys.unraisablehook
  failed = True
  with tempfile.TemporaryFile() as held:
    os.dup2(held.fileno(), 2)
    sys.unraisablehook = lambda _: None
    try:
      yield
      failed = False
    finally:
      gc.collect()  # coroutines left behind by a failed read report themselves now, into `held`
      sys.stderr.flush()
      os.dup2(saved_fd, 2)
      os.close(saved_fd)
      sys.unraisablehook = saved_hook
      if not failed:
        held.seek(0)
        sys.stderr.write(held.read().decode(errors="replace"))


def _check_fits(where: str, saved_tree, abstract, source: str, prefix: str = "") -> None:
  bad = misfit(saved_tree, abstract, prefix)
  if bad:
    raise RunError(f"{where} does not fit the config: {bad}. Either change the config back to the one it was "
                   f"trained with, or start a new run (another --workdir) from its weights with "
                   f"--config.checkpoint.load_params={source} (where the weight shapes allow)")


def _as_saved(abstract, saved_tree, prefix: str = ""):
  """`abstract` with each array's dtype as saved: restore reads the values the checksums were taken
  of, and `_in_config_dtypes` casts them after verification, so a resume that changed a dtype
  (model.params_dtype, optim.exp_avg_dtype) is not taken for damage."""
  saved = {n: getattr(m, "dtype", None) for n, m in zip(checksum.leaf_names(saved_tree), jax.tree.leaves(saved_tree))}
  leaves, treedef = jax.tree.flatten(abstract)
  names = [f"{prefix}.{n}" if prefix else n for n in checksum.leaf_names(abstract)]
  return treedef.unflatten([jax.ShapeDtypeStruct(a.shape, saved.get(n) or a.dtype) for n, a in zip(names, leaves)])


def _in_config_dtypes(tree, abstract, where: str):
  """`tree` cast to the dtypes of `abstract`, saying so in one line when any differ."""
  cast = [(x.dtype, a.dtype) for x, a in zip(jax.tree.leaves(tree), jax.tree.leaves(abstract)) if x.dtype != a.dtype]
  if cast:
    kinds = ", ".join(sorted({f"{jnp.dtype(f).name} -> {jnp.dtype(t).name}" for f, t in cast}))
    print(f"{where}: {len(cast)} arrays cast to the config's dtypes ({kinds})", file=sys.stderr)
  return jax.tree.map(lambda x, a: x if x.dtype == a.dtype else _cast(x, a.dtype), tree, abstract)


def _cast(x, dtype):
  """`x` as `dtype`, placed as it was (a leaf in pinned host memory is cast in device memory)."""
  return jax.jit(lambda v: jax.device_put(v, jax.memory.Space.Device).astype(dtype), out_shardings=x.sharding)(x)


def _verified(tree, recorded, prefix: str = ""):
  """`tree` if it matches its recorded checksums and is finite, else Damaged."""
  if recorded is None:  # saved before checksums existed: finiteness is all we can check
    _, nonfinite = checksum.to_host(tree, checksum.fingerprint(tree))
    problem = f"non-finite values in {nonfinite[0]}" if nonfinite else None
  else:
    problem = checksum.verify(tree, recorded, prefix)
  if problem:
    raise Damaged(problem)
  return tree


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


def _step_dirs(directory: str, where: str) -> list[str]:
  """The training checkpoints in DIR, newest first: DIR itself (one checkpoints/<step>) or those of
  a training workdir."""
  d = os.path.abspath(directory)
  if os.path.isdir(os.path.join(d, "state")):
    return [d]
  if os.path.isdir(os.path.join(d, "checkpoints")):
    root = os.path.join(d, "checkpoints")
    return [os.path.join(root, n) for n in sorted((n for n in os.listdir(root) if n.isdigit()), key=int, reverse=True)]
  raise RunError(f"{where}: no weights there; give a weights-only checkpoint (DIR/params), a training "
                 "workdir (DIR/checkpoints/<step>) or one of its checkpoints/<step>")


def params_metadata(directory: str, flag: str = "checkpoint.load_params"):
  """The saved weights' tree (Orbax metadata: names and shapes) that `load_weights(directory)` reads
  (of the newest readable checkpoint, for a training workdir), e.g. to see which layout they were
  saved in."""
  d = os.path.abspath(directory)
  if os.path.isdir(os.path.join(d, PARAMS_ITEM)):
    with ocp.StandardCheckpointer() as ckpt:
      return ckpt.metadata(os.path.join(d, PARAMS_ITEM)).item_metadata.tree
  for step_dir in _step_dirs(directory, f"{flag}={directory}"):
    try:
      return _state_metadata(step_dir)[PARAMS_ITEM]
    except Damaged:  # load_weights reports it and takes an older one
      continue
  return None


def _state_metadata(step_dir: str):
  """The metadata tree of a training checkpoint's train state, or Damaged."""
  if not os.path.isdir(os.path.join(step_dir, "state")):
    raise Damaged("its state/ directory is missing")
  with ocp.PyTreeCheckpointer() as ckpt:
    try:
      with _quiet_stderr():
        meta = ckpt.metadata(os.path.join(step_dir, "state")).item_metadata
    except Exception as e:  # noqa: BLE001  any unreadable metadata means a damaged checkpoint
      raise Damaged(_short(e)) from None
  if meta is None or meta.tree is None:
    raise Damaged("the metadata of its state/ cannot be read")
  return meta.tree


def load_weights(directory: str, abstract: dict, shardings: dict, flag: str = "checkpoint.load_params") -> dict:
  """The weights in DIR and their router state, restored into `shardings` (any mesh layout).

  `abstract`: {"params": ..., "moe_state": ...} (moe_state may be left out or empty). DIR is a
  weights-only checkpoint (DIR/params, and DIR/moe_state where the weights came with one), a
  training workdir (its newest checkpoint that verifies) or one of its checkpoints/<step>; both
  items come from the same checkpoint. An item the source lacks (router state) comes back None.
  `flag` names DIR in messages (the setting or command-line flag it came from)."""
  d, where = os.path.abspath(directory), f"{flag}={directory}"
  if os.path.isdir(os.path.join(d, PARAMS_ITEM)):
    out = dict.fromkeys(abstract)
    for item in _wanted(abstract, lambda i: os.path.isdir(os.path.join(d, i))):
      with ocp.StandardCheckpointer() as ckpt:
        path = os.path.join(d, item)
        _check_fits(where, ckpt.metadata(path).item_metadata.tree, abstract[item], directory)
        out[item] = ckpt.restore(path, _target(abstract[item], shardings[item]))
    return out
  for step_dir in _step_dirs(directory, where):
    try:
      return _restore_weights(step_dir, abstract, shardings, where, directory)
    except Damaged as e:
      print(f"{step_dir} is damaged ({e}); trying the previous checkpoint", file=sys.stderr)
  raise RunError(f"{where}: no checkpoint there passes verification")


def _wanted(abstract: dict, saved) -> list[str]:
  """The items of `abstract` to restore: the weights, and router state where the config has some
  and the source `saved` it (`saved(item)`)."""
  return [i for i, a in abstract.items() if i == PARAMS_ITEM or (jax.tree.leaves(a) and saved(i))]


def _restore_weights(step_dir: str, abstract: dict, shardings: dict, where: str, source: str) -> dict:
  """`load_weights`' items of the train state saved in `step_dir`, verified against its checksums."""
  state_dir, saved = os.path.join(step_dir, "state"), _state_metadata(step_dir)
  with ocp.PyTreeCheckpointer() as ckpt:
    items = _wanted(abstract, lambda i: jax.tree.leaves(saved.get(i, {})))
    for item in items:
      _check_fits(f"{where} ({step_dir})", saved, abstract[item], source, prefix=item)
    target = {i: _target(_as_saved(abstract[i], saved, i), shardings[i]) for i in items}
    try:
      with _quiet_stderr():
        restored = ckpt.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=target, partial_restore=True,
            restore_args={i: ocp.checkpoint_utils.construct_restore_args(t) for i, t in target.items()}))
    except Exception as e:  # noqa: BLE001
      raise Damaged(_short(e)) from None
  recorded = None
  if os.path.isdir(os.path.join(step_dir, "checksums")):
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as json_ckpt:
      recorded = json_ckpt.restore(os.path.join(step_dir, "checksums"))
  out = dict.fromkeys(abstract)
  for item in items:
    out[item] = _in_config_dtypes(_verified(restored[item], recorded, item), abstract[item], f"{where} ({step_dir})")
  return out


class _Pinned:
  """Orbax preservation policy: keeps the given steps (the last verified checkpoint)."""

  def __init__(self):
    self.steps: set[int] = set()

  def should_preserve(self, checkpoints, *, context):
    return [c.step in self.steps for c in checkpoints]


@jax.jit
def _device_copy(tree):
  return jax.tree.map(jnp.copy, tree)


class CheckpointManager:
  """Saves every `save_interval` steps (and when forced), keeps `max_to_keep` (+ every
  `keep_interval`-th, + the last verified), restores the newest checkpoint that verifies.

  With `async_save` the training thread only pays, at a save step, an on-device copy of the
  state; one background thread checksums the copy, brings it to host memory a block at a time
  and runs Orbax's save of it while training goes on with the original, and Orbax writes and
  commits the files in its own background thread. A save waits for the previous one to be
  committed (it only stalls training when the storage cannot keep up with save_interval steps),
  so a crash loses at most the steps since the previous save plus those run while the newest one
  was being written. Needs device memory for one more copy of the train state during a save, and
  host memory for one; set checkpoint.async_save=False where that does not fit.
  """

  def __init__(self, workdir: str, save_interval: int, max_to_keep: int, async_save: bool = True,
               keep_interval: int | None = None):
    self._pinned = _Pinned()
    keep = [policies.LatestN(max_to_keep), self._pinned]
    if keep_interval:
      keep.append(policies.EveryNSteps(keep_interval))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policies.AnyPreservationPolicy(keep), enable_async_checkpointing=async_save,
        create=True, cleanup_tmp_directories=True, todelete_subdir=TRASH)
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self._workdir, self._interval = workdir, save_interval
    handlers = dict(state=ocp.StandardCheckpointHandler(), meta=ocp.JsonCheckpointHandler(),
                    checksums=ocp.JsonCheckpointHandler())
    self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._saver = ThreadPoolExecutor(1, thread_name_prefix="moejax-save") if async_save else None
    self._pending: Future | None = None
    self._copy, self._fingerprint = _device_copy, checksum.fingerprint

  def prepare(self, abstract: Any, shardings: Any) -> None:
    """Readies the async save for states like `abstract` in `shardings`, in the background thread,
    so that the first save does not pay for it: compiles the copy and the checksums and has the
    pinned host memory of one staging block allocated (`staging.warm_up`)."""
    if self._saver is not None:
      self._wait_pending()
      self._pending = self._saver.submit(self._prepare, _target(_saved(abstract), _saved(shardings)))

  def _prepare(self, target) -> None:
    self._copy = _device_copy.lower(target).compile()
    self._fingerprint = checksum.fingerprint.lower(target).compile()
    if staging.can_stage(target):
      staging.warm_up({d for t in jax.tree.leaves(target) for d in t.sharding.addressable_devices})

  def _empty_trash(self) -> None:
    """Removes the checkpoints retention renamed aside (a crash halfway through is harmless there:
    nothing in it is taken for a checkpoint). Called when no Orbax deletion is in flight."""
    if jax.process_index() == 0:
      shutil.rmtree(os.path.join(self.directory, TRASH), ignore_errors=True)

  def _wait_pending(self) -> None:
    """Waits for the background save call in flight (re-raising its error)."""
    if self._pending is not None:
      pending, self._pending = self._pending, None
      pending.result()

  def latest_step(self) -> int | None:
    self._wait_pending()
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    self._wait_pending()
    return sorted(self._mngr.all_steps())

  def save(self, step: int, state: Any, meta: dict | None = None, force: bool = False) -> bool:
    """Saves `state` at `step` when it is a multiple of save_interval (or `force`), with its
    checksums; a state holding NaN or inf is not saved (one line says so). Returns whether a
    save started (with async saves that check runs in the background, so True)."""
    if not force and step % self._interval:
      return False
    self.wait()  # the previous save committed: at most one in flight, as with Orbax alone
    state = _saved(state)
    if self._saver is None:
      return self._checked_save(step, state, meta)
    self._pending = self._saver.submit(self._checked_save, step, self._copy(state), meta)
    return True

  def _checked_save(self, step: int, state: Any, meta: dict | None) -> bool:
    """Checksums `state` and saves it with them unless it holds NaN or inf. An async save of a
    state this process holds whole copies it to host memory in paced blocks first
    (moejax/checkpoint/staging.py); otherwise Orbax copies it at once."""
    sums, nonfinite = checksum.to_host(state, self._fingerprint(state))
    if nonfinite:
      more = f" and {len(nonfinite) - 1} more" if len(nonfinite) > 1 else ""
      print(f"step {step}: not saved: the state holds NaN or inf in {nonfinite[0]}{more}", file=sys.stderr)
      return False
    if self._saver is not None and staging.can_stage(state):
      state = staging.to_host(state)
    self._empty_trash()  # the previous save, and the retention after it, are finished
    return self._mngr.save(step, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta or {"step": step}),
        checksums=ocp.args.JsonSave(sums)))

  def restore(self, abstract: Any, shardings: Any, step: int | None = None):
    """(state, meta) of the newest checkpoint that passes verification, restored into `shardings`
    (which may be another mesh than the one saved from); None when there is none. Damaged ones
    are moved aside on the way. With `step`, exactly that one (Damaged if it fails). The state
    comes back as checkpoints hold it (`_saved`: a TrainState without its compute copy)."""
    self._wait_pending()
    abstract, shardings = _saved(abstract), _saved(shardings)
    if step is not None:
      return self._restore_verified(step, abstract, shardings)
    while (latest := self.latest_step()) is not None:
      try:
        out = self._restore_verified(latest, abstract, shardings)
      except Damaged as e:
        moved = self._move_aside(latest)
        print(f"checkpoint step {latest} is damaged ({e}); moved aside to {moved}; trying the previous one",
              file=sys.stderr)
        continue
      self._pinned.steps = {latest}  # the last checkpoint known to be good is never deleted
      return out
    corrupt = sorted(n for n in os.listdir(self.directory) if CORRUPT in n)
    if corrupt:
      raise RunError(f"no usable checkpoint in {self.directory}: {', '.join(corrupt)} failed verification; "
                     "move them out of that directory to start this run afresh")
    return None

  def _restore_verified(self, step: int, abstract, shardings):
    step_dir = os.path.join(self.directory, str(step))
    saved = _state_metadata(step_dir)
    _check_fits(f"checkpoint step {step} in {self.directory}", saved, abstract, self._workdir)
    items = dict(state=ocp.args.StandardRestore(_target(_as_saved(abstract, saved), shardings)),
                 meta=ocp.args.JsonRestore())
    has_sums = os.path.isdir(os.path.join(step_dir, "checksums"))
    if has_sums:
      items["checksums"] = ocp.args.JsonRestore()
    try:
      with _quiet_stderr():
        out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # noqa: BLE001
      raise Damaged(_short(e)) from None
    state = _verified(out.state, out.checksums if has_sums else None)
    return _in_config_dtypes(state, abstract, f"checkpoint step {step}"), out.meta

  def _move_aside(self, step: int) -> str:
    src = os.path.join(self.directory, str(step))
    dst, i = src + CORRUPT, 1
    while os.path.exists(dst):
      dst, i = f"{src}{CORRUPT}.{i}", i + 1
    if jax.process_index() == 0:
      os.rename(src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"moejax: moved checkpoint {step} aside")
    self._mngr.reload()
    return dst

  def wait(self) -> None:
    """Waits until the saves started so far are committed."""
    self._wait_pending()
    self._mngr.wait_until_finished()

  def close(self) -> None:
    """Waits for the save in flight, then closes."""
    try:
      self.wait()
      self._empty_trash()
    finally:
      if self._saver is not None:
        self._saver.shutdown()
      self._mngr.close()

  def __enter__(self) -> CheckpointManager:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
