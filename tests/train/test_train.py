"""End to end through train.py: the tiny recipe learns; SIGTERM + restart resumes exactly."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

SMALL = ["--config.train.train_iters=24", "--config.checkpoint.save_interval=8", "--config.train.log_interval=8",
         "--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.train.seq_length=32",
         "--config.train.global_batch_size=8", "--config.train.micro_batch_size=1"]


def _run(repo, workdir, extra=(), wait=True, devices=1):
  cmd = [sys.executable, "train.py", "--config", "configs/tiny_moe.py", "--workdir", str(workdir), *extra]
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "XLA_FLAGS": ""}
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
