"""Does saving stall training? Step time of save steps against normal steps on one GPU (issue 17).

  source benchmarks/device_env.sh && python3 benchmarks/checkpoint_stall.py [--steps 640]
      [--save-interval 300] [--modes async,async_device_metrics,orbax,sync]
      [--workdir /tmp/checkpoint_stall] [--out DIR] [--small]

Model: the 1.1B MoE of benchmarks/train_smoke.sh (4 layers, H 2048, 16 heads / 4 KV, 8 experts of
F 5632, top-2, vocab 32000, seq 2048, batch 8, bf16 compute, fp32 weights and AdamW: ~13 GB of
train state), synthetic tokens. Each iteration is what moejax/train/loop.py does per step: the
jitted step, the metrics fetch, the save call; it is timed from the start of one step to the start
of the next, so a save's cost on the training thread lands in its step. Modes:

  async   moejax's CheckpointManager, async (the default): an on-device copy on the training
          thread; checksums, the paced copy to host memory and Orbax's save in a background thread
  async_device_metrics
          the same with the step's metrics in device memory, as before moejax put them in pinned
          host memory: their fetch can wait behind the save's device-to-host copies
  orbax   Orbax's own async CheckpointManager called on the training thread (no checksums, no
          copy): its save returns only once the state is in host memory
  sync    moejax's CheckpointManager with checkpoint.async_save=False

Prints a table last: per mode the median normal step, the median save step and the median of the
slowest of the five steps after each save (all saves but the first), both over a normal step (the
target: <= 1.2 for `async`), the first save step and the slowest of the five steps after it, and
how long the last save took to commit after the loop (`drain`; a save waits for the previous
commit, so save_interval steps must outlast it, or the storage sets the pace), then each mode's
step times around each save split into dispatch, metrics fetch and the longest GIL gap a probe
thread saw. Each mode's checkpoints (~13 GB each) are deleted after it. `--small` is a CPU smoke test of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.config import base_config
from moejax.data.loader import device_batch, make_dataset
from moejax.parallel.sharding import batch_sharding, host_replicated, replicated
from moejax.train.optim import lr_schedule
from moejax.train.state import init_state, setup
from moejax.train.step import make_train_step


def config(small: bool):
  c = base_config()
  if small:
    c.model.update(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                   vocab_size=257, dtype="float32")
    c.moe.update(num_experts=4, router_topk=2, ffn_hidden_size=64)
    c.train.update(seq_length=64, global_batch_size=4, micro_batch_size=4)
  else:
    c.model.update(num_layers=4, hidden_size=2048, ffn_hidden_size=5632, num_attention_heads=16,
                   num_query_groups=4, vocab_size=32000, dtype="bfloat16")
    c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=5632)
    c.train.update(seq_length=2048, global_batch_size=8, micro_batch_size=8)
  c.data.source = "synthetic"
  return c


class OrbaxOnly:
  """Orbax's async CheckpointManager as the loop would call it without moejax's manager."""

  def __init__(self, directory: str, interval: int):
    self.interval = interval
    self.mngr = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        max_to_keep=2, enable_async_checkpointing=True, create=True))

  def save(self, step, state):
    if step % self.interval == 0:
      self.mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)

  def close(self):
    self.mngr.wait_until_finished()
    self.mngr.close()


class GilProbe(threading.Thread):
  """Wakes every millisecond and keeps the longest gap between wake-ups since `take()`: a gap far
  over 1 ms means another thread held the GIL (the training thread would have waited as long)."""

  def __init__(self):
    super().__init__(daemon=True)
    self.gap, self.stopped = 0.0, False

  def run(self):
    last = time.perf_counter()
    while not self.stopped:
      time.sleep(0.001)
      now = time.perf_counter()
      self.gap, last = max(self.gap, now - last), now

  def take(self) -> float:
    gap, self.gap = self.gap, 0.0
    return gap


def run(mode: str, cfg, args) -> dict:
  # `async_device_metrics`: the step's metrics in device memory (before moejax put them in host memory)
  metrics_sharding = replicated if mode == "async_device_metrics" else host_replicated
  parts = setup(cfg, jax.devices()[:1])
  mesh, rules, model, optimizer = parts.layout.mesh, parts.rules, parts.model, parts.optimizer
  abstract, shardings = parts.abstract, parts.shardings
  directory = os.path.join(args.workdir, mode)
  shutil.rmtree(directory, ignore_errors=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = init_state(model, optimizer, cfg.train.seq_length, 0, shardings)
    bsh = batch_sharding(mesh, rules, ndim=3)
    dataset = make_dataset(cfg, 1, bsh)
    step_fn = jax.jit(make_train_step(model, optimizer, lr_schedule(cfg)), in_shardings=(shardings, bsh),
                      out_shardings=(shardings, metrics_sharding(mesh)), donate_argnums=0)
    compiled = step_fn.lower(state, device_batch(dataset[0], bsh)).compile()
    if mode == "orbax":
      ckpt = OrbaxOnly(os.path.join(directory, "checkpoints"), args.save_interval)
    else:
      ckpt = CheckpointManager(directory, args.save_interval, 2, async_save=mode.startswith("async"))
      ckpt.prepare(abstract, shardings)  # as the loop does after compiling the step
    times, save_calls, split = [], [], []
    batch = device_batch(dataset[0], bsh)
    probe = GilProbe()
    probe.start()
    start = time.perf_counter()
    for step in range(args.steps):
      state, metrics = compiled(state, batch)
      t_dispatch = time.perf_counter()
      jax.device_get(metrics)
      t0 = time.perf_counter()
      split.append((t_dispatch - start, t0 - t_dispatch, probe.take()))
      ckpt.save(step + 1, state)
      if (step + 1) % args.save_interval == 0:
        save_calls.append(time.perf_counter() - t0)
      batch = device_batch(dataset[step + 1], bsh)  # the loop reads the next batch here too
      now = time.perf_counter()
      times.append(now - start)
      start = now
    probe.stopped = True
    t0 = time.perf_counter()
    ckpt.close()
    drain = time.perf_counter() - t0
  shutil.rmtree(directory, ignore_errors=True)
  warm = 3  # compile-free but still warming up
  saves = [s for s in range(args.steps) if (s + 1) % args.save_interval == 0]
  first, later = saves[0], [s for s in saves[1:] if s + 1 < args.steps]
  near = {s + d for s in saves for d in range(6)}
  normal = [s for s in range(warm, args.steps) if s not in near]
  med = lambda idx: statistics.median(times[i] for i in idx) * 1e3 if idx else float("nan")  # noqa: E731
  worst_after = [max(times[s + 1:s + 6]) * 1e3 for s in later]
  row = dict(mode=mode, normal_ms=med(normal), save_ms=med(later),
             after_save_ms=statistics.median(worst_after) if worst_after else float("nan"),
             first_save_ms=times[first] * 1e3, first_after_ms=max(times[first + 1:first + 6]) * 1e3,
             save_call_ms=[t * 1e3 for t in save_calls], drain_s=drain, steps=args.steps,
             save_interval=args.save_interval, step_times_ms=[t * 1e3 for t in times],
             dispatch_fetch_gil_ms=[[round(v * 1e3, 2) for v in row] for row in split])
  row["save_over_normal"] = row["save_ms"] / row["normal_ms"]
  row["after_over_normal"] = row["after_save_ms"] / row["normal_ms"]
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=640)
  p.add_argument("--save-interval", type=int, default=300)
  p.add_argument("--modes", default="async,async_device_metrics,sync")
  p.add_argument("--workdir", default="/tmp/checkpoint_stall")
  p.add_argument("--out", default="")
  p.add_argument("--small", action="store_true", help="tiny model: a CPU smoke test of this script")
  args = p.parse_args()
  cfg = config(args.small)
  print(f"jax {jax.__version__}, orbax-checkpoint {ocp.__version__}, {jax.devices()[0].device_kind}",
        file=sys.stderr)
  rows = [run(mode, cfg, args) for mode in args.modes.split(",")]
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "checkpoint_stall.json"), "w") as f:
      json.dump(rows, f, indent=1)
  for r in rows:  # where the time of the steps around each save went
    print(f"\n{r['mode']}: step around a save = total ms (dispatch / metrics fetch / longest GIL gap)")
    for s in [s for s in range(r["steps"]) if (s + 1) % r["save_interval"] == 0]:
      cells = [f"{r['step_times_ms'][i]:.0f} ({'/'.join(f'{v:.0f}' for v in r['dispatch_fetch_gil_ms'][i])})"
               for i in range(s - 1, min(s + 5, r["steps"]))]
      print(f"  save at {s + 1}: " + ", ".join(cells))
  print(f"\n{'mode':15} {'normal':>8} {'save':>8} {'after':>8} {'save/normal':>11} {'after/normal':>12} "
        f"{'1st save':>9} {'1st after':>9} {'drain':>6}")
  for r in rows:
    print(f"{r['mode']:15} {r['normal_ms']:6.1f}ms {r['save_ms']:6.1f}ms {r['after_save_ms']:6.1f}ms "
          f"{r['save_over_normal']:10.2f}x {r['after_over_normal']:11.2f}x {r['first_save_ms']:7.0f}ms "
          f"{r['first_after_ms']:7.0f}ms {r['drain_s']:5.1f}s")


if __name__ == "__main__":
  main()
