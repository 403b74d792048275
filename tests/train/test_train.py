"""End to end through train.py: the tiny recipe learns; SIGTERM + restart resumes exactly; kill -9
during async saves never leaves a checkpoint taken for complete that is not."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import pytest

from moejax.config.recipes import load_recipe

SMALL = ["--config.train.train_iters=24", "--config.checkpoint.save_interval=8", "--config.train.log_interval=8",
         "--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.train.seq_length=32",
         "--config.train.global_batch_size=8", "--config.train.micro_batch_size=1"]


def _run(repo, workdir, extra=(), wait=True, devices=1):
  recipe = [] if "--config" in extra else ["--config", "configs/tiny_moe.py"]
  cmd = [sys.executable, "train.py", *recipe, "--workdir", str(workdir), *extra]
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
  proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if not wait:
    return proc
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return err


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_tiny_recipe_learns(repo_root, tmp_path):
  """The default recipe: mean LM loss of the last 10% of steps >= 30% below the first 10%."""
  _run(repo_root, tmp_path)
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == list(range(1, 201))
  n = len(rows) // 10
  first = sum(r["lm_loss"] for r in rows[:n]) / n
  last = sum(r["lm_loss"] for r in rows[-n:]) / n
  assert last <= 0.7 * first, (first, last)
  for key in ("loss", "lm_loss", "aux_loss", "z_loss", "grad_norm", "lr", "tokens_per_sec",
              "tflops_per_device", "mfu"):
    assert key in rows[-1]
  assert os.listdir(tmp_path / "tensorboard")


def test_sigterm_then_restart_resumes_same_trajectory(repo_root, tmp_path):
  """Interrupted on 4 devices (dp=2 x ep=2), resumed: same losses as an uninterrupted run."""
  ref_dir, dir_ = tmp_path / "ref", tmp_path / "run"
  layout = SMALL + ["--config.parallel.ep=2"]
  _run(repo_root, ref_dir, layout, devices=4)
  proc = _run(repo_root, dir_, layout, wait=False, devices=4)
  deadline = time.time() + 300
  while time.time() < deadline:
    if (dir_ / "metrics.jsonl").exists() and len(_metrics(dir_)) >= 10:
      break
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  stopped = len(_metrics(dir_))
  assert 10 <= stopped < 24 and "checkpoint saved" in err
  err = _run(repo_root, dir_, layout, devices=4)
  assert f"resumed from checkpoint at step {stopped}" in err
  ref, rows = _metrics(ref_dir), _metrics(dir_)
  assert [r["step"] for r in rows] == list(range(1, 25))
  for a, b in zip(ref, rows):
    assert a["step"] == b["step"]
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5), a["step"]


KILLED_RECIPE = """
from moejax.config import base_config


def get_config():  # small and dense: the saves, not the model, are under test
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, dtype="float32")
  c.train.update(seq_length=32, global_batch_size=2, micro_batch_size=2, train_iters=60, log_interval=100)
  c.data.source = "synthetic"
  c.checkpoint.update(save_interval=4, max_to_keep=3)
  c.logging.tensorboard = False
  return c
"""


def _complete_checkpoints_verify(cfg, workdir):
  """Restores (with checksums) every checkpoint Orbax takes for complete; returns the newest step."""
  from moejax.checkpoint.manager import CheckpointManager
  from moejax.train.state import setup
  parts = setup(cfg, jax.devices()[:1])
  abstract, shardings = parts.abstract, parts.shardings
  with CheckpointManager(str(workdir), cfg.checkpoint.save_interval, 100) as ckpt:
    for step in ckpt.all_steps():
      state, _ = ckpt.restore(abstract, shardings, step=step)  # raises Damaged if it is not whole
      assert int(state.step) == step
    return ckpt.latest_step()


def test_kill_9_during_async_saves_never_leaves_a_bad_checkpoint_taken_for_complete(repo_root, tmp_path):
  """SIGKILL at random delays (seeded) after a save step is logged, so around its async save. After
  each kill every checkpoint taken for complete restores and verifies. Orbax starts a save only once
  the previous one has committed, so the newest complete checkpoint is the newest save started or
  the one before it: the steps lost are at most save_interval plus the steps run while that save
  was still being written. The last run resumes (taking over the dead trainer's lock) and logs
  every step once."""
  recipe = tmp_path / "recipe.py"
  recipe.write_text(KILLED_RECIPE)
  cfg = load_recipe(str(recipe))
  args = ["--config", str(recipe)]
  interval = cfg.checkpoint.save_interval
  rng = random.Random(17)
  workdir = tmp_path / "run"
  logged = 0
  for delay in (0.0, rng.uniform(0.0, 0.05), rng.uniform(0.05, 0.3)):
    save_step = (logged // interval + 2) * interval
    proc = _run(repo_root, workdir, args, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and (not (workdir / "metrics.jsonl").exists()
                                      or not any(r["step"] >= save_step for r in _metrics(workdir))):
      time.sleep(0.005)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    logged = max(r["step"] for r in _metrics(workdir))
    latest = _complete_checkpoints_verify(cfg, workdir)
    saves = list(range(interval, logged + 1, interval))
    # committed for sure: all but the newest save started (the newest may not have started yet
    # when the kill came between its log line and its save call)
    committed = saves[:-2] if logged == saves[-1] else saves[:-1]
    assert latest in [None, *saves] and (latest or 0) >= (committed[-1] if committed else 0), (logged, latest)
  err = _run(repo_root, workdir, args)
  assert f"resumed from checkpoint at step {latest}" in err and "took over" in err and "damaged" not in err
  assert [r["step"] for r in _metrics(workdir)] == list(range(1, 61))


PIPELINE_RUNS = {  # name: (overrides, micro_batch_size giving 8 rows per micro-batch, devices)
    "pp2_vpp2_cp2": (["--config.parallel.pp=2", "--config.parallel.vpp=2", "--config.parallel.cp=2"], 4, 8),
    "pp2_ep2_tp2_sp": (["--config.parallel.pp=2", "--config.parallel.ep=2", "--config.parallel.tp=2",
                        "--config.parallel.sequence_parallel=True"], 4, 8),
    "cp2_ep4": (["--config.parallel.cp=2", "--config.parallel.ep=4"], 2, 8),
    # pp the whole mesh: the stages' shard_map is manual over every axis, so the layers' own shard_maps
    # (embedding lookup, MoE dispatch) must run as single-device code there
    "pp2_only": (["--config.parallel.pp=2"], 8, 2),
}
PIPELINE_BASE = ["--config.model.num_layers=4", "--config.train.train_iters=3", "--config.train.log_interval=1",
                 "--config.train.global_batch_size=16"]


@pytest.fixture(scope="module")
def one_device_losses(repo_root, tmp_path_factory):
  """Three steps of the tiny recipe (4 layers, fp32) on one device, 8 rows per micro-batch."""
  workdir = tmp_path_factory.mktemp("one_device")
  _run(repo_root, workdir, PIPELINE_BASE + ["--config.train.micro_batch_size=8"])
  return _metrics(workdir)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in ("pp2_vpp2_cp2", "pp2_only") else pytest.mark.slow)
                                  for n in PIPELINE_RUNS])
def test_pipeline_and_context_parallel_through_train_py(repo_root, tmp_path, one_device_losses, name):
  """train.py with pp, vpp, cp, EP and TP+SP logs the single device's losses (1e-5); with pp it prints the
  stages and the schedule's bubble fraction (Megatron's formula). The default runs, pp=2 x vpp=2 x cp=2
  on 8 devices and pp=2 alone on 2, cover the pipeline and cp; the slow ones add EP with TP+SP under pp
  and cp folded into EP."""
  overrides, micro, devices = PIPELINE_RUNS[name]
  err = _run(repo_root, tmp_path, PIPELINE_BASE + overrides + [f"--config.train.micro_batch_size={micro}"],
             devices=devices)
  rows = _metrics(tmp_path)
  assert [r["step"] for r in rows] == [1, 2, 3]
  for key in ("loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"):
    assert [r[key] for r in rows] == pytest.approx([r[key] for r in one_device_losses], rel=1e-5, abs=1e-5), key
  if name == "pp2_vpp2_cp2":  # dp=2: 16 / (4·2) = 2 micro-batches; Megatron's (pp−1)/(m·vpp) = 1/4
    assert "pipeline stages (pp rank: virtual stages)" in err and "bubble fraction 0.2500" in err
