"""The loop never loses work (issue 17): non-finite steps are skipped then stop the run with the good
checkpoints intact; a damaged newest checkpoint is moved aside and the previous one resumes the
same trajectory, every step logged once; a changed model is refused in one line.

One good run (module fixture) is copied for each case; every run here has the same step program
(the schedule does not depend on train_iters), so it compiles once for the module. The model is
dense (nothing here depends on MoE, and it compiles in half the time); the MoE case of a changed
shape (moe.num_experts) is tests/checkpoint/test_manager.py's.
"""
import glob
import json
import os
import shutil

import jax
import pytest

from moejax.config import RunError
from moejax.train.loop import train


def _cfg(small_moe_config):
  c = small_moe_config()
  c.moe.num_experts = None
  c.train.update(train_iters=6, log_interval=100)
  c.optim.update(lr=1e-2, min_lr=1e-3, lr_decay_iters=50)  # the schedule is the same whatever train_iters
  c.checkpoint.update(save_interval=2, max_to_keep=3)
  c.logging.update(tensorboard=False, profile=True, profile_step_start=1, profile_step_end=3)
  return c


def _train(cfg, workdir):
  return train(cfg, str(workdir), devices=jax.devices()[:1])


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _steps(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, small_moe_config):
  """6 steps, checkpoints at 2, 4 and 6."""
  workdir = tmp_path_factory.mktemp("good") / "run"
  _train(_cfg(small_moe_config), workdir)
  assert _steps(workdir) == ["2", "4", "6"]
  return workdir


def test_chosen_steps_are_profiled(good_run):
  """logging.profile: a trace of steps 1 and 2 with the step's HLO beside it, which
  benchmarks/profile_breakdown.py reads (on the CPU, XLA's host thunks stand for kernels)."""
  import importlib.util
  path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "profile_breakdown.py")
  module_spec = importlib.util.spec_from_file_location("profile_breakdown", path)
  tool = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(tool)
  profile = os.path.join(good_run, "profile")
  assert glob.glob(os.path.join(profile, "plugins", "profile", "*", "*.trace.json.gz"))
  assert "HloModule" in open(os.path.join(profile, "step.hlo.txt")).read()
  per_cat, per_op, busy_ms, _ = tool.breakdown(profile, steps=2, host=True)
  assert busy_ms > 0 and per_op
  # overlapping kernels (two streams) count once; the gap between them is idle
  assert tool.busy_and_idle([dict(ts=0, dur=5), dict(ts=3, dur=4), dict(ts=10, dur=2)]) == (9.0, 3.0)
  assert {"attention projections + rotary", "LM head + loss"} <= {c for c, _ in per_cat}
  concat = "jit(step)/transpose(jvp(GPTModel))/decoder/concatenate"  # as in an H200 Mixtral-proxy trace
  assert tool.categorize(concat, "input_concatenate_fusion_8") == "layer-stack gradient concatenation"
  rotary = "jit(step)/transpose(jvp(GPTModel))/decoder/eval_jaxpr/segment_0/block_0/attention/concatenate"
  assert tool.categorize(rotary, "input_concatenate_fusion_22") == "attention projections + rotary"


@pytest.fixture
def run_copy(good_run, tmp_path):
  shutil.copytree(good_run, tmp_path / "run")
  return tmp_path / "run"


def _contents(workdir, step):
  """{file: bytes} of a checkpoint directory."""
  root = os.path.join(workdir, "checkpoints", str(step))
  return {os.path.relpath(os.path.join(r, f), root): open(os.path.join(r, f), "rb").read()
          for r, _, fs in os.walk(root) for f in fs}


def test_nonfinite_steps_are_skipped_then_the_run_stops_with_the_good_checkpoints_intact(
    run_copy, small_moe_config, capfd):
  """Finding 1: lr=1e30 made NaN from step 3 on, training went on, exit 0, NaN checkpoints replaced good ones."""
  before = {s: _contents(run_copy, s) for s in (4, 6)}
  cfg = _cfg(small_moe_config)
  cfg.optim.update(lr=1e30, min_lr=1e29)
  cfg.train.train_iters = 20
  with pytest.raises(RunError) as e:
    _train(cfg, run_copy)
  msg = str(e.value)
  rows = [r for r in _rows(run_copy) if r["step"] > 6]
  skipped = [r["step"] for r in rows if r["skipped"]]
  first = skipped[0]
  # the first non-finite step and the next 2 are skipped (train.skip_nonfinite_steps=3 allows three), the 4th stops
  assert skipped == list(range(first, first + 4)) and rows[-1]["step"] == first + 3
  assert msg.startswith(f"step {first + 3}: loss ") and "\n" not in msg
  assert "not finite for 4 steps in a row (train.skip_nonfinite_steps=3)" in msg
  assert "the last checkpoint is step 6" in msg
  assert "update skipped (1 of at most train.skip_nonfinite_steps=3 in a row)" in capfd.readouterr().err
  # no checkpoint from a non-finite state, the good ones untouched
  assert [s for s in _steps(run_copy) if int(s) > 6] == [f"{s}" for s in range(8, first, 2)]
  assert {s: _contents(run_copy, s) for s in (4, 6)} == before


def test_overwritten_bytes_are_detected_moved_aside_and_the_previous_step_resumes(run_copy, good_run,
                                                                                   small_moe_config, capfd):
  """Finding 2: 16 bytes overwritten in an array file restored silently; the loss went NaN.
  Also finding 5: after the resume from step 4 every step is in metrics.jsonl once."""
  files = [f for f in glob.glob(str(run_copy / "checkpoints/6/state/**/*"), recursive=True) if os.path.isfile(f)]
  biggest = max(files, key=os.path.getsize)
  size = os.path.getsize(biggest)
  with open(biggest, "r+b") as f:
    f.seek(size // 2)
    f.write(b"\x5a" * 16)
  assert os.path.getsize(biggest) == size
  rows = _train(_cfg(small_moe_config), run_copy)
  err = capfd.readouterr().err
  assert f"checkpoint step 6 is damaged (checksum mismatch in " in err
  assert f"moved aside to {run_copy}/checkpoints/6.corrupt; trying the previous one" in err
  assert "resumed from checkpoint at step 4" in err
  assert _steps(run_copy) == ["2", "4", "6", "6.corrupt"]
  want = {r["step"]: r["loss"] for r in _rows(good_run)}
  assert [r["step"] for r in rows] == [5, 6]
  for r in rows:
    assert r["loss"] == pytest.approx(want[r["step"]], rel=1e-6)
  assert [r["step"] for r in _rows(run_copy)] == [1, 2, 3, 4, 5, 6]


def test_a_changed_model_shape_is_refused_in_one_line(run_copy, small_moe_config):
  """Finding 7: moe.num_experts=16 on an 8-expert checkpoint printed a 286-line traceback advising strict=False
  (here the FFN width changes)."""
  cfg = _cfg(small_moe_config)
  cfg.model.ffn_hidden_size = 128
  with pytest.raises(RunError) as e:
    _train(cfg, run_copy)
  msg = str(e.value)
  assert "\n" not in msg and msg.startswith(f"checkpoint step 6 in {run_copy}/checkpoints does not fit the config: ")
  assert "params.decoder.segment_0.block_0.mlp.down is [2, 64, 32] there, [2, 128, 32] in the config" in msg
  assert "change the config back" in msg and f"--config.checkpoint.load_params={run_copy}" in msg
  assert _steps(run_copy) == ["2", "4", "6"]  # nothing moved aside: the checkpoint is fine


def test_a_ramped_batch_resumes_on_the_same_samples(tmp_path, small_moe_config):
  """Batch ramp-up 4 -> 8 over 40 samples: stopped after step 4 (a compiled step per size, the second
  compiled between steps) and resumed, the run equals an uninterrupted one step by step; each row logs
  the step's batch and the samples consumed after it; resuming under another ramp is refused in one line."""
  def cfg(**train):
    c = _cfg(small_moe_config)
    c.train.update(**{"train_iters": None, "train_samples": 40, "rampup_batch_size": (4, 4, 8), **train})
    c.optim.update(lr_decay_iters=None, lr_decay_samples=400)
    c.logging.profile = False
    return c

  _train(cfg(), tmp_path / "full")
  _train(cfg(exit_interval=4), tmp_path / "run")
  assert _steps(tmp_path / "run") == ["2", "4"]
  _train(cfg(), tmp_path / "run")
  full, resumed = _rows(tmp_path / "full"), _rows(tmp_path / "run")
  assert [r["global_batch_size"] for r in full] == [4, 4, 8, 8, 8, 8]
  assert [r["consumed_samples"] for r in full] == [4, 8, 16, 24, 32, 40]
  assert [(r["step"], r["global_batch_size"], r["consumed_samples"]) for r in resumed] == \
      [(r["step"], r["global_batch_size"], r["consumed_samples"]) for r in full]
  for a, b in zip(full, resumed):
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-6) and b["lr"] == a["lr"], a["step"]
  with pytest.raises(RunError) as e:
    _train(cfg(rampup_batch_size=(4, 4, 16)), tmp_path / "run")
  assert "\n" not in str(e.value) and str(e.value).startswith(
      "the checkpoint at step 6 had consumed 40 samples, but this config's batch schedule")


def test_queued_steps_read_each_step_after_the_next_dispatch_except_where_asked():
  """Step k's metrics come back once step k + 1 is dispatched, except after a step whose state is
  read at once (read_now), which comes back before the next dispatch; every step once, in order."""
  from moejax.train.loop import queued_steps
  events = []

  def run_step(k):
    events.append(("dispatch", k))
    return jax.numpy.asarray(k)

  for k, metrics, dt, current in queued_steps(run_step, range(6), lambda k: k in (2, 5)):
    events.append(("read", k, current))
    assert int(metrics) == k and dt >= 0
  assert events == [("dispatch", 0), ("dispatch", 1), ("read", 0, False), ("dispatch", 2),
                    ("read", 1, False), ("read", 2, True), ("dispatch", 3), ("dispatch", 4),
                    ("read", 3, False), ("dispatch", 5), ("read", 4, False), ("read", 5, True)]
  tail = [(k, c) for k, _, _, c in queued_steps(run_step, range(2), lambda k: False)]
  assert tail == [(0, False), (1, True)]  # the last step, read at the end
