"""One run per workdir (finding 4: two trainers interleaved metrics.jsonl and crashed on each
other's temporary checkpoint directories)."""
import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from moejax.config import RunError
from moejax.train.lock import LOCK_FILE, WorkdirLock
from moejax.train.loop import train


@pytest.fixture
def other_trainer():
  """A live process standing in for a trainer that holds a workdir."""
  proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  yield proc
  proc.kill()
  proc.wait()


def _hold(workdir, pid, host=None):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, LOCK_FILE), "w") as f:
    json.dump({"host": host or socket.gethostname(), "pid": pid, "started": None, "since": "then"}, f)


def test_a_second_trainer_is_refused_naming_the_first(tmp_path, other_trainer, small_moe_config):
  _hold(tmp_path, other_trainer.pid)
  with pytest.raises(RunError) as e:
    train(small_moe_config(), str(tmp_path), devices=jax.devices()[:1])
  assert str(e.value) == (f"workdir {tmp_path} is in use by the trainer with pid {other_trainer.pid} on "
                          f"{socket.gethostname()} (since then): wait for it to finish, stop it, or use another --workdir")
  assert sorted(os.listdir(tmp_path)) == [LOCK_FILE]  # nothing touched: no metrics, no checkpoints


def test_the_lock_is_released_and_one_process_cannot_take_it_twice(tmp_path):
  with WorkdirLock(str(tmp_path)):
    assert os.path.exists(tmp_path / LOCK_FILE)
    with pytest.raises(RunError, match=f"in use by the trainer with pid {os.getpid()}"):
      WorkdirLock(str(tmp_path)).__enter__()
  assert not os.path.exists(tmp_path / LOCK_FILE)


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capfd, other_trainer):
  other_trainer.kill()
  other_trainer.wait()  # a dead pid on this host
  _hold(tmp_path, other_trainer.pid)
  with WorkdirLock(str(tmp_path)):
    assert json.load(open(tmp_path / LOCK_FILE))["pid"] == os.getpid()
  err = capfd.readouterr().err
  assert f"took over {tmp_path / LOCK_FILE}: its trainer (pid {other_trainer.pid} on {socket.gethostname()}" in err


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
  _hold(tmp_path, 1234, host="elsewhere")
  with pytest.raises(RunError, match=f"in use by the trainer with pid 1234 on elsewhere .*delete {tmp_path / LOCK_FILE} "
                                     "if no trainer runs there"):
    WorkdirLock(str(tmp_path)).__enter__()


def test_train_py_exits_non_zero_with_one_line(repo_root, tmp_path, other_trainer):
  _hold(tmp_path, other_trainer.pid)
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1"}
  out = subprocess.run([sys.executable, "train.py", "--config", "configs/tiny_moe.py", "--workdir", str(tmp_path)],
                       cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)
  lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert lines[-1].startswith(f"workdir {tmp_path} is in use by the trainer with pid {other_trainer.pid}")
