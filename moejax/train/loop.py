"""The training loop: mesh, state (fresh or resumed), data, jitted step, logs, checkpoints."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.config import RunError
from moejax.data.batch_schedule import BatchSchedule
from moejax.data.loader import device_batch, make_dataset, make_eval_dataset
from moejax.metrics.flops import describe_params, peak_tflops_per_device, train_flops_per_token
from moejax.metrics.logging import MOE_ARRAY_KEYS, MetricsWriter, moe_records
from moejax.metrics.memory import memory_report
from moejax.metrics.profile import StepProfiler
from moejax.models.gpt import GPTModel
from moejax.parallel.sharding import batch_sharding, host_replicated, replicated
from moejax.train.lock import WorkdirLock
from moejax.train.loss import loss_fn, step_loss_tokens
from moejax.train.pipeline import describe_pipeline
from moejax.train.start import initial_state
from moejax.train.state import StatePlacement, setup, with_compute_copy
from moejax.train.stop import StopAgreement
from moejax.train.step import jit_train_step
from moejax.train.validate import validate


def make_eval_step(model: GPTModel, placement: StatePlacement | None = None):
  """eval(params, batch [num_micro, b, seq+1], moe_state) -> (mean LM loss over the micro-batches, 1), or with
  per-token loss (train.calculate_per_token_loss, `step_loss_tokens`) the batch's per-token loss and its loss
  tokens, the weight of the batch among the evaluation's; on the compute copy of the master params with a
  `placement`, as the train step."""

  def step(params, batch_NBS1, moe_state=None):
    if placement is not None:
      params = placement.compute_params(params)
    loss_tokens = step_loss_tokens(model, batch_NBS1)

    def micro(total, tokens_BS1):
      return total + loss_fn(model, params, tokens_BS1, moe_state, loss_tokens=loss_tokens)[1][0]["lm_loss"], None

    total, _ = jax.lax.scan(micro, jnp.zeros((), jnp.float32), batch_NBS1)
    n = batch_NBS1.shape[0]
    return total / n, jnp.float32(1.0) if loss_tokens is None else loss_tokens * n

  return step


def evaluate(eval_fn, params, dataset, index: int, eval_iters: int, bsh) -> dict:
  """Evaluation number `index` (1-based) on its own `eval_iters` validation batches: their losses averaged
  with the weights `make_eval_step` gives them."""
  batches = (dataset[(index - 1) * eval_iters + j] for j in range(eval_iters))
  losses, weights = np.asarray([jax.device_get(eval_fn(params, device_batch(b, bsh))) for b in batches], np.float64).T
  loss = float(np.average(losses, weights=weights))
  return {"eval_loss": loss, "eval_ppl": float(np.exp(min(loss, 80.0)))}


def _meta(step: int, batches: BatchSchedule) -> dict:
  """A checkpoint's metadata: its step and the samples consumed before it (Megatron's consumed_train_samples)."""
  return {"step": step, "consumed_samples": batches.consumed(step)}


def _check_consumed(meta: dict, batches: BatchSchedule) -> None:
  """Resuming reads on from the samples the checkpoint's run had consumed; a batch schedule that puts its
  step elsewhere would skip or repeat data: RunError naming it."""
  step, saved = int(meta["step"]), meta.get("consumed_samples")  # older checkpoints: no count
  if saved is not None and saved != batches.consumed(step):
    raise RunError(f"the checkpoint at step {step} had consumed {saved} samples, but this config's batch schedule "
                   f"(train.global_batch_size, train.rampup_batch_size, train.step_batch_size_schedule) reaches "
                   f"step {step} after {batches.consumed(step)}: resume with the schedule it was saved with")


def _check_nonfinite(step: int, record: dict, run: int, t, last_checkpoint: int | None) -> None:
  """After a step whose loss or gradient norm is NaN/inf: a line when it was skipped, RunError when
  train.skip_nonfinite_steps is exhausted (or the guard is off, so the state itself is lost)."""
  what = f"loss {record['loss']}, grad_norm {record['grad_norm']}"
  if not t.check_for_nan_in_loss_and_grad:
    print(f"step {step}: {what}, not finite (train.check_for_nan_in_loss_and_grad=False: the update was "
          "applied; nothing is saved from now on)", file=sys.stderr)
    return
  if run <= t.skip_nonfinite_steps:
    print(f"step {step}: {what}, not finite: update skipped ({run} of at most "
          f"train.skip_nonfinite_steps={t.skip_nonfinite_steps} in a row)", file=sys.stderr)
    return
  raise RunError(f"step {step}: {what}, not finite for {run} steps in a row (train.skip_nonfinite_steps="
                 f"{t.skip_nonfinite_steps}); stopped without saving, the last checkpoint is step {last_checkpoint}: "
                 "lower optim.lr or check the data around this step, then resume in the same --workdir")


def queued_steps(run_step, steps, read_now):
  """Runs `run_step(k)` (it dispatches step k and returns its metrics, still on the device) for k in
  `steps` with one step queued: step k's metrics are read once step k + 1 is dispatched, so the
  host's work between steps (logging, the next batch, the dispatch itself) overlaps the device.
  Where `read_now(k)` (the state after k is read right after it) they are read before the next
  dispatch. Yields (k, metrics on the host, seconds, current), `current` when no later step was
  dispatched; a step's time runs from its dispatch or the previous step's end, whichever is later
  (end to end while steps are queued, as torchtitan times its steps)."""
  pending, last_end = None, 0.0

  def read(k, metrics, t0, current):
    nonlocal last_end
    metrics = jax.device_get(metrics)
    end = time.perf_counter()
    dt, last_end = end - max(t0, last_end), end
    return k, metrics, dt, current

  for k in steps:
    t0 = time.perf_counter()
    metrics = run_step(k)
    if pending is not None:
      yield read(*pending, False)
    pending = (k, metrics, t0)
    if read_now(k):
      yield read(*pending, True)
      pending = None
  if pending is not None:
    yield read(*pending, True)


def describe_layout(layout) -> str:
  """The parallel sizes as set and derived, e.g. `8 devices: tp=2 cp=1 pp=1 ep=4 etp=1 -> dp=4 edp=2`."""
  z = layout.sizes
  return (f"{layout.mesh.size} device(s): tp={z.tp} cp={z.cp} pp={z.pp} ep={z.ep} etp={z.etp} "
          f"-> dp={z.dp} edp={z.edp}")


def train(cfg, workdir: str, devices=None) -> list[dict]:
  """Trains `cfg` in `workdir`, resuming from its newest checkpoint; returns the step metrics."""
  devices = list(jax.devices() if devices is None else devices)
  validate(cfg, len(devices))
  parts = setup(cfg, devices)
  layout, rules, model, optimizer = parts.layout, parts.rules, parts.model, parts.optimizer
  abstract, shardings, placement = parts.abstract, parts.shardings, parts.placement
  mesh, n_dev = layout.mesh, layout.mesh.size
  spec = model.spec
  t = cfg.train
  batches = BatchSchedule.of(cfg)
  train_iters = batches.train_iters
  flops_per_token = train_flops_per_token(spec, t.seq_length)
  peak = peak_tflops_per_device(cfg.logging.peak_tflops_per_device)
  stop = StopAgreement(t.exit_duration_in_mins, t.exit_interval)  # from here: a signal during compilation counts
  history = []

  c = cfg.checkpoint
  # one lock per run: a multi-process run's processes share the workdir, process 0 holds it
  lock = WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with (lock, jax.set_mesh(mesh), nn.logical_axis_rules(rules),
        CheckpointManager(workdir, c.save_interval, c.max_to_keep, c.async_save, c.keep_interval) as ckpt):
    print(f"{describe_layout(layout)}; {describe_params(spec)}", file=sys.stderr)
    restored = ckpt.restore(abstract, shardings)  # the newest checkpoint that verifies
    if restored is not None and int(restored[0].step) >= train_iters:
      key = "train_iters" if t.train_samples is None else "train_samples"
      steps = "" if t.train_samples is None else f": {train_iters} steps"
      print(f"already at step {int(restored[0].step)} (train.{key}={getattr(t, key)}{steps}); nothing to do: raise "
            f"train.{key} to train further", file=sys.stderr)
      return history
    if restored is not None:
      _check_consumed(restored[1], batches)
      state = with_compute_copy(restored[0], spec.dtype, shardings)
      print(f"resumed from checkpoint at step {int(state.step)}", file=sys.stderr)
    else:
      state = initial_state(cfg, model, optimizer, abstract, shardings, ckpt, mesh, rules)
    bsh = batch_sharding(mesh, rules, ndim=3)
    dataset = make_dataset(cfg, n_dev, bsh)
    eval_dataset = make_eval_dataset(cfg, n_dev, bsh)
    start = int(state.step)
    per_micro = t.micro_batch_size * layout.sizes.dp
    micro_batches = lambda step: batches.global_batch_size(step) // per_micro  # noqa: E731
    if cfg.parallel.pp > 1:
      print(describe_pipeline(cfg, micro_batches(start)), file=sys.stderr)
    if batches.ramps:
      print(f"batch ramp-up: global batches {batches.sizes()}, {train_iters} steps; step {start} takes "
            f"{batches.global_batch_size(start)} after {batches.consumed(start)} samples", file=sys.stderr)
    step_fn = jit_train_step(cfg, parts, host_replicated(mesh))
    t0 = time.perf_counter()
    first = step_fn.lower(state, device_batch(dataset[start], bsh)).compile()
    compiled = {micro_batches(start): first}  # one per batch size of a ramp-up
    ckpt.prepare(abstract, shardings)  # the save's own compile, off the first save step
    eval_fn = None
    if eval_dataset is not None:
      eval_jit = jax.jit(make_eval_step(model, placement), in_shardings=(shardings.params, bsh, shardings.moe_state),
                         out_shardings=replicated(mesh))
      eval_fn = lambda params, batch: eval_jit(params, batch, state.moe_state)  # noqa: E731
    print(f"compiled the train step in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    print(memory_report(first, abstract, shardings), file=sys.stderr)
    writer = MetricsWriter(workdir, cfg.logging.tensorboard, train_iters, start_step=start,
                           primary=jax.process_index() == 0)
    lg = cfg.logging
    profiler = StepProfiler(os.path.join(workdir, "profile"), lg.profile_step_start, lg.profile_step_end,
                            lg.profile, first)
    nonfinite_run = 0

    def steps():
      for k in range(start, train_iters):
        if not stop.allows(k):
          return
        if micro_batches(k) not in compiled:  # the ramp-up's next batch: its own micro-batch count, compiled
          t1 = time.perf_counter()            # between steps (`read_now`), so no step's time counts it
          compiled[micro_batches(k)] = step_fn.lower(state, device_batch(dataset[k], bsh)).compile()
          print(f"step {k + 1}: global batch {batches.global_batch_size(k)}, {micro_batches(k)} micro-batches; "
                f"compiled its train step in {time.perf_counter() - t1:.1f}s", file=sys.stderr)
        yield k

    def run_step(step):
      nonlocal state
      batch = device_batch(dataset[step], bsh)
      profiler.before(step)
      state, metrics = compiled[micro_batches(step)](state, batch)
      return metrics

    def record_of(step, metrics, dt) -> dict:
      tps = batches.global_batch_size(step) * t.seq_length / dt
      tflops = flops_per_token * tps / n_dev / 1e12
      record = {k: float(v) for k, v in metrics.items() if k not in MOE_ARRAY_KEYS}
      record.update(moe_records(metrics, cfg.logging.moe_per_layer))
      record.update(step_time=dt, tokens_per_sec=tps, tflops_per_device=tflops,
                    mfu=(tflops / peak) if peak else None)
      if batches.ramps:  # Megatron's log line has both
        record.update(global_batch_size=batches.global_batch_size(step), consumed_samples=batches.consumed(step + 1))
      return record

    def log(step, record) -> bool:
      """Logs step `step`'s record; returns whether its loss and gradient norm were finite."""
      nonlocal nonfinite_run
      history.append({"step": step + 1, **record})
      finite = math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
      nonfinite_run = 0 if finite else nonfinite_run + 1
      writer.write(step + 1, record, console=(step + 1) % t.log_interval == 0 or step == start
                   or step + 1 == train_iters or not finite)
      if nonfinite_run:
        _check_nonfinite(step + 1, record, nonfinite_run, t, ckpt.latest_step())
      return finite

    def read_now(step) -> bool:
      """Whether the state after `step` is read (saved, evaluated, traced, the run stops after it, or the next
      step's batch size is still to be compiled) before the next step runs."""
      return ((step + 1) % c.save_interval == 0 or step + 1 == train_iters or step + 1 == stop.stop_after
              or (eval_fn is not None and (step + 1) % t.eval_interval == 0)
              or (lg.profile and lg.profile_step_start - 1 <= step < lg.profile_step_end)
              or micro_batches(step + 1) not in compiled)

    try:
      for step, metrics, dt, current in queued_steps(run_step, steps(), read_now):
        profiler.after(step)
        record = record_of(step, metrics, dt)
        if not current:
          log(step, record)
          continue
        if eval_fn is not None and (step + 1) % t.eval_interval == 0:
          record.update(evaluate(eval_fn, state.params, eval_dataset, (step + 1) // t.eval_interval,
                                 t.eval_iters, bsh))
          print(f"step {step + 1} | eval_loss {record['eval_loss']:.4g} | eval_ppl "
                f"{record['eval_ppl']:.4g}", file=sys.stderr, flush=True)
        finite = log(step, record)
        stopping = step + 1 == stop.stop_after
        if finite:  # a state whose last step was not finite is never saved
          ckpt.save(step + 1, state, _meta(step + 1, batches), force=stopping)
        if stopping:
          print(f"stopping at step {step + 1} {stop.reason}; " + ("checkpoint saved" if finite else
                f"not saved (the step was not finite; the last checkpoint is step {ckpt.latest_step()})"),
                file=sys.stderr)
          break
      else:
        if nonfinite_run == 0 and ckpt.latest_step() != int(state.step):
          ckpt.save(int(state.step), state, _meta(int(state.step), batches), force=True)
    finally:
      profiler.close()
      writer.close()
  return history
