"""Multi-process launch: the arguments taken from flags, the environment or SLURM; two processes of 4
CPU devices each (jax.distributed over gloo) train the tiny model with the same losses as one
process of 8 devices, each reading its own rows, and write one checkpoint together; a signal to
one of them stops both after the same step."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from moejax.train.distributed import distributed_args

TINY = ["--config", "configs/tiny_moe.py", "--config.train.train_iters=3", "--config.checkpoint.save_interval=3",
        "--config.train.log_interval=1", "--config.model.num_layers=1", "--config.model.hidden_size=32",
        "--config.moe.ffn_hidden_size=32", "--config.model.ffn_hidden_size=64", "--config.train.seq_length=16",
        "--config.train.global_batch_size=8", "--config.train.micro_batch_size=1", "--config.parallel.ep=2",
        "--config.logging.tensorboard=False"]


@pytest.mark.parametrize("flags,env,want", [
    (("", 0, -1), {}, None),
    (("h:1234", 2, 1), {}, dict(coordinator_address="h:1234", num_processes=2, process_id=1)),
    (("", 0, -1), {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"},
     dict(coordinator_address="h:1", num_processes=4, process_id=3)),
    (("h:1", 1, 0), {}, None),                                          # one process: nothing to start
    (("", 0, -1), {"SLURM_NTASKS": "16", "SLURM_STEP_ID": "0"}, {}),    # srun: JAX reads SLURM itself
    (("", 0, -1), {"SLURM_NTASKS": "16"}, None),                        # sbatch script outside srun
])
def test_distributed_args(monkeypatch, flags, env, want):
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS", "SLURM_STEP_ID"):
    monkeypatch.delenv(key, raising=False)
  for key, value in env.items():
    monkeypatch.setenv(key, value)
  assert distributed_args(*flags) == want


def test_partial_launch_values_name_what_is_missing():
  with pytest.raises(ValueError, match="the process id is missing"):
    distributed_args("h:1", 2, -1)


def _train(repo, workdir, devices, extra=()):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices)}
  return subprocess.Popen([sys.executable, "train.py", *TINY, "--workdir", str(workdir), *extra], cwd=repo, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc):
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return err


def test_two_processes_train_like_one(repo_root, tmp_path):
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  launch = [f"--coordinator_address=localhost:{port}", "--num_processes=2"]
  procs = [_train(repo_root, tmp_path / "two", 4, launch + [f"--process_id={i}"]) for i in range(2)]
  errs = [_finish(p) for p in procs]
  one = _finish(_train(repo_root, tmp_path / "one", 8))
  assert "8 device(s)" in errs[0] and "8 device(s)" in one and "memory per device" in one
  rows = [json.loads(line) for line in open(tmp_path / "two" / "metrics.jsonl")]  # process 0 writes alone
  want = [json.loads(line) for line in open(tmp_path / "one" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3]
  for a, b in zip(want, rows):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
  assert "3" in os.listdir(tmp_path / "two" / "checkpoints")


def test_a_signal_to_one_process_stops_all_after_the_same_step(repo_root, tmp_path):
  """SIGTERM to process 1 alone. Before, it stopped and began a save by itself while process 0 waited
  in the next step's collectives: a hang until the job was killed, with nothing saved. Now both stop
  after the step process 0 posts (moejax/train/stop.py) and save it together."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  # no persistent XLA cache (conftest shares one with subprocesses): with the other two-process test's
  # executables in it, one process loaded a cached checksum program while the other compiled its own,
  # and their cross-process collectives never met
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4")
  logs = [open(tmp_path / f"p{i}.log", "w+") for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "train.py", *TINY, "--workdir", str(tmp_path / "run"), "--config.train.train_iters=2000",
       "--config.checkpoint.save_interval=2000", f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={i}"], cwd=repo_root, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  try:
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 300
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5) and time.monotonic() < deadline:
      assert procs[0].poll() is None, open(tmp_path / "p0.log").read()[-3000:]
      time.sleep(0.2)
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
      p.wait(timeout=120)  # before: process 0 hung here
  finally:
    for p in procs:
      p.kill()
  out = [open(tmp_path / f"p{i}.log").read() for i in range(2)]
  assert [p.returncode for p in procs] == [0, 0], out[1][-3000:]
  lines = [re.search(r"stopping at step (\d+) on signal to process 1; checkpoint saved", o) for o in out]
  assert lines[0] and lines[1] and lines[0].group(1) == lines[1].group(1), (out[0][-2000:], out[1][-2000:])
  assert lines[0].group(1) in os.listdir(tmp_path / "run" / "checkpoints")
