"""Does saving stall training? Step time of save steps against normal steps on one GPU (issue 17).

  source benchmarks/device_env.sh && python3 benchmarks/checkpoint_stall.py [--steps 160]
      [--save-interval 50] [--modes async,orbax,sync] [--workdir /tmp/checkpoint_stall] [--out DIR] [--small]

Model: the 1.1B MoE of benchmarks/train_smoke.sh (4 layers, H 2048, 16 heads / 4 KV, 8 experts of
F 5632, top-2, vocab 32000, seq 2048, batch 8, bf16 compute, fp32 weights and AdamW: ~13 GB of
train state), synthetic tokens. Each iteration is what moejax/train/loop.py does per step: the
jitted step, the metrics fetch, the save call; it is timed from the start of one step to the start
of the next, so a save's cost on the training thread lands in its step. Modes:

  async   moejax's CheckpointManager, async (the default): checksums and an on-device copy on the
          training thread, Orbax's save of the copy in a background thread
  orbax   Orbax's own async CheckpointManager called on the training thread (no checksums, no
          copy): its save returns only once the state is in host memory
  sync    moejax's CheckpointManager with checkpoint.async_save=False

Prints a table last: per mode the median normal step, median save step, median step after a save,
save/normal (the target: <= 1.2 for `async`), and how long the last save took to commit after the
loop (`drain`; a save waits for the previous commit, so save_interval steps must outlast it, or
the storage, not the device-to-host copy, sets the pace). Each mode's checkpoints (~13 GB each)
are deleted after it. `--small` is a CPU smoke test of this script.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

import jax
import orbax.checkpoint as ocp
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.config import base_config, model_spec
from moejax.data.loader import device_batch, make_dataset
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import batch_sharding, logical_axis_rules, replicated
from moejax.train.optim import lr_schedule, make_optimizer
from moejax.train.state import init_state, state_shardings
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


def run(mode: str, cfg, args) -> dict:
  layout = make_mesh(cfg, jax.devices()[:1])
  mesh, rules = layout.mesh, logical_axis_rules(layout)
  model, optimizer = GPTModel(model_spec(cfg)), make_optimizer(cfg)
  with nn.logical_axis_rules(rules):
    abstract, shardings = state_shardings(model, optimizer, cfg.train.seq_length, mesh, rules)
  directory = os.path.join(args.workdir, mode)
  shutil.rmtree(directory, ignore_errors=True)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = init_state(model, optimizer, cfg.train.seq_length, 0, shardings)
    bsh = batch_sharding(mesh, rules, ndim=3)
    dataset = make_dataset(cfg, 1, bsh)
    step_fn = jax.jit(make_train_step(model, optimizer, lr_schedule(cfg)), in_shardings=(shardings, bsh),
                      out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
    compiled = step_fn.lower(state, device_batch(dataset[0], bsh)).compile()
    if mode == "orbax":
      ckpt = OrbaxOnly(os.path.join(directory, "checkpoints"), args.save_interval)
    else:
      ckpt = CheckpointManager(directory, args.save_interval, 2, async_save=mode == "async")
    times = []
    batch = device_batch(dataset[0], bsh)
    start = time.perf_counter()
    for step in range(args.steps):
      state, metrics = compiled(state, batch)
      jax.device_get(metrics)
      ckpt.save(step + 1, state)
      batch = device_batch(dataset[step + 1], bsh)  # the loop reads the next batch here too
      now = time.perf_counter()
      times.append(now - start)
      start = now
    t0 = time.perf_counter()
    ckpt.close()
    drain = time.perf_counter() - t0
  shutil.rmtree(directory, ignore_errors=True)
  warm = 3  # compile-free but still warming up
  save_steps = [s for s in range(warm, args.steps) if (s + 1) % args.save_interval == 0]
  after = [s + 1 for s in save_steps if s + 1 < args.steps]
  normal = [s for s in range(warm, args.steps) if s not in save_steps and s not in after]
  med = lambda idx: statistics.median(times[i] for i in idx) * 1e3  # noqa: E731
  row = dict(mode=mode, normal_ms=med(normal), save_ms=med(save_steps), after_save_ms=med(after), drain_s=drain,
             steps=args.steps, save_interval=args.save_interval, step_times_ms=[t * 1e3 for t in times])
  row["save_over_normal"] = row["save_ms"] / row["normal_ms"]
  return row


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--steps", type=int, default=160)
  p.add_argument("--save-interval", type=int, default=50)
  p.add_argument("--modes", default="async,orbax,sync")
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
  print(f"\n{'mode':8} {'normal step':>12} {'save step':>10} {'after save':>11} {'save/normal':>12} {'drain':>7}")
  for r in rows:
    print(f"{r['mode']:8} {r['normal_ms']:10.1f}ms {r['save_ms']:8.1f}ms {r['after_save_ms']:9.1f}ms "
          f"{r['save_over_normal']:11.2f}x {r['drain_s']:6.1f}s")


if __name__ == "__main__":
  main()
