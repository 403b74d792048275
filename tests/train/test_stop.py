"""Early stops in one process (moejax/train/stop.py; the multi-process agreement on a signal is in
tests/train/test_distributed.py, SIGTERM through train.py in tests/train/test_train.py):
train.exit_interval stops at its multiples, also after a resume, and train.exit_duration_in_mins
after the step that crossed it; each saves the step it stopped after."""
import os

import jax
import pytest

from moejax.config import ConfigError, base_config
from moejax.train.loop import train
from moejax.train.validate import validate


def _cfg(**train_keys):
  c = base_config()
  c.model.update(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=257, dtype="float32")
  c.moe.update(num_experts=4, router_topk=2, ffn_hidden_size=16)
  c.train.update(seq_length=16, micro_batch_size=1, global_batch_size=2, train_iters=10, **train_keys)
  c.checkpoint.save_interval = 100
  c.data.source = "synthetic"
  c.logging.tensorboard = False
  return c


def test_exit_interval_stops_at_its_multiples(tmp_path, capfd):
  cfg = _cfg(exit_interval=3)
  assert [r["step"] for r in train(cfg, str(tmp_path), jax.devices()[:1])] == [1, 2, 3]
  assert [r["step"] for r in train(cfg, str(tmp_path), jax.devices()[:1])] == [4, 5, 6]  # resumed at 3
  err = capfd.readouterr().err
  assert "stopping at step 3 at train.exit_interval=3; checkpoint saved" in err
  assert "stopping at step 6 at train.exit_interval=3; checkpoint saved" in err
  assert {"3", "6"} <= set(os.listdir(tmp_path / "checkpoints"))


def test_exit_duration_stops_after_the_step_that_crossed_it(tmp_path, capfd):
  rows = train(_cfg(exit_duration_in_mins=1e-9), str(tmp_path), jax.devices()[:1])
  assert [r["step"] for r in rows] == [1]
  assert "stopping at step 1 after train.exit_duration_in_mins=1e-09; checkpoint saved" in capfd.readouterr().err
  assert "1" in os.listdir(tmp_path / "checkpoints")


@pytest.mark.parametrize("key,value", [("exit_interval", 0), ("exit_duration_in_mins", -1.0)])
def test_non_positive_exits_are_refused(key, value):
  with pytest.raises(ConfigError, match=f"train.{key}={value} must be > 0"):
    validate(_cfg(**{key: value}))
