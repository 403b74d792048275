"""Batch-size ramp-up: each step's global batch and samples against megatron-core's
RampupBatchsizeNumMicroBatchesCalculator and Megatron-LM's step count (peer subprocess,
tests/peers/megatron_batches.py); the step schedule against its definition written out here; the
loader reads each step's records from the samples before it; settings that do not go together."""
import json
import pathlib
import re
import subprocess

import numpy as np
import pytest

from moejax.config import ConfigError, base_config
from moejax.data.batch_schedule import BatchSchedule, parse_step_schedule
from moejax.data.loader import make_dataset, split_sizes
from moejax.train.validate import validate

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"


def _cfg(**train):
  c = base_config()
  c.data.source = "synthetic"
  c.train.update(**{"train_iters": None, "micro_batch_size": 2, "seq_length": 16, **train})
  return c


RAMPS = [  # (rampup_batch_size, global_batch_size, train_samples, micro, dp)
    ((8, 8, 200), 32, 1000, 2, 2),
    ((16, 8, 300_000 // 100), 1024, 50_000, 4, 2),  # Megatron's documented example, shortened
    ((4, 12, 100), 28, 90, 2, 1),  # the run ends inside the ramp
    ((6, 2, 1), 12, 500, 2, 1),  # one ramp sample: the final batch from the second step
    ((3, 3, 1000), 9, 5000, 3, 1),  # samples per increment not a whole number
]


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_rampup_matches_megatron(tmp_path):
  cases = [{"rampup": list(r), "global_batch_size": g, "micro_batch_size": m, "data_parallel_size": dp,
            "steps": 60, "train_samples": n} for r, g, n, m, dp in RAMPS]
  (tmp_path / "cases.json").write_text(json.dumps(cases))
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_batches.py"), str(tmp_path / "cases.json"),
                      str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  for (ramp, gbs, samples, micro, dp), want in zip(RAMPS, json.load(open(tmp_path / "out.json"))):
    c = _cfg(rampup_batch_size=ramp, global_batch_size=gbs, train_samples=samples)
    c.train.micro_batch_size = micro
    validate(c, dp)
    b = BatchSchedule.of(c)
    assert [b.global_batch_size(k) for k in range(60)] == want["sizes"], ramp
    assert [b.consumed(k) for k in range(60)] == want["consumed"], ramp
    assert [b.global_batch_size(k) // (micro * dp) for k in range(60)] == want["micro_batches"], ramp
    assert b.train_iters == want["train_iters"], ramp
    assert set(want["sizes"]) <= set(b.sizes()) and b.sizes()[-1] == gbs


def _step_schedule_reference(pairs, consumed):
  """The step schedule's definition: the batch of the last threshold at or below the consumed samples."""
  return [size for threshold, size in pairs if threshold <= consumed][-1]


def test_step_schedule_follows_its_definition():
  text = "0:8, 1.5K:16 4K:32"  # thresholds in tokens: 1500 and 4000 tokens of 16 -> samples 93 and 250
  assert parse_step_schedule(text, 16) == ((0, 8), (93, 16), (250, 32))
  assert parse_step_schedule("0:768 250B:1536", 4096) == ((0, 768), (250 * 10**9 // 4096, 1536))
  c = _cfg(step_batch_size_schedule=text, global_batch_size=32, train_samples=1001)
  validate(c, 2)
  b = BatchSchedule.of(c)
  consumed, sizes = 0, []
  while consumed < 1001:  # newer Megatron-LM's update_train_iters with a step schedule
    sizes.append(_step_schedule_reference(((0, 8), (93, 16), (250, 32)), consumed))
    assert b.consumed(len(sizes) - 1) == consumed
    consumed += sizes[-1]
  assert [b.global_batch_size(k) for k in range(len(sizes))] == sizes
  assert b.train_iters == len(sizes) and b.sizes() == [8, 16, 32]


def test_a_constant_batch_is_the_plain_schedule():
  c = _cfg(train_samples=1001, global_batch_size=32)
  b = BatchSchedule.of(c)
  assert not b.ramps and b.train_iters == 1001 // 32 and b.consumed(7) == 7 * 32 and b.sizes() == [32]
  c.train.update(train_iters=9, train_samples=None)
  assert BatchSchedule.of(c).train_iters == 9


def test_loader_reads_each_steps_batch_after_the_samples_before_it():
  """Under a ramp the batch of step k is records consumed(k) .. consumed(k) + its batch, as [its
  micro-batches, micro x dp, seq + 1]: the same records a constant batch reads in its place."""
  c = _cfg(rampup_batch_size=(4, 4, 20), global_batch_size=12, train_samples=200)
  validate(c, 2)
  b, ramped = BatchSchedule.of(c), make_dataset(c, 2)
  flat = make_dataset(_cfg(train_iters=100, global_batch_size=1, micro_batch_size=1), 1)  # record by record
  for k in range(12):
    batch = ramped[k]
    assert batch.shape == (b.global_batch_size(k) // 4, 4, 17), k
    first = b.consumed(k)
    want = np.concatenate([flat[first + i] for i in range(b.global_batch_size(k))]).reshape(batch.shape)
    np.testing.assert_array_equal(batch, want)
  assert split_sizes(c)[0] == max(200, b.consumed(b.train_iters))


@pytest.mark.parametrize("train,message", [
    (dict(train_iters=10, train_samples=100), "train.train_iters and train.train_samples are both set: give one "
                                              "(train.train_iters=None"),
    (dict(train_iters=None), "train.train_iters and train.train_samples are both unset"),
    (dict(train_iters=10, rampup_batch_size=(4, 4, 20)), "train.rampup_batch_size needs sample-based training: set "
                                                         "train.train_samples and train.train_iters=None"),
    (dict(train_samples=100, rampup_batch_size=(4, 4)), "train.rampup_batch_size=(4, 4) must be three integers"),
    (dict(train_samples=100, rampup_batch_size=(16, 4, 20)), "must start above 0 and below "
                                                             "train.global_batch_size=16"),
    (dict(train_samples=100, rampup_batch_size=(4, 4, 0)), "with a positive increment and ramp-up samples"),
    (dict(train_samples=100, rampup_batch_size=(4, 8, 20)), "train.global_batch_size - start = 12 is not divisible "
                                                            "by the increment 8"),
    (dict(train_samples=100, rampup_batch_size=(2, 2, 20)), "global batch 2 of the batch schedule is not divisible "
                                                            "by train.micro_batch_size*dp=4"),
    (dict(train_samples=100, step_batch_size_schedule="0:4 1K"), "entry '1K' is not THRESHOLD:BATCH_SIZE"),
    (dict(train_samples=100, step_batch_size_schedule="16:4 1K:16"), "must start with a threshold of 0"),
    (dict(train_samples=100, step_batch_size_schedule="0:8 1K:4 2K:16"), "batch sizes must be positive and never "
                                                                         "decrease"),
    (dict(train_samples=100, step_batch_size_schedule="0:4 1K:8"), "ends at batch 8: set train.global_batch_size=8"),
    (dict(train_samples=100, step_batch_size_schedule="0:4 8:8 1K:16"), "thresholds must differ by at least "
                                                                        "train.seq_length=16 tokens"),
    (dict(train_samples=100, rampup_batch_size=(4, 4, 20), step_batch_size_schedule="0:4 1K:16"),
     "train.rampup_batch_size and train.step_batch_size_schedule are both set"),
])
def test_settings_that_do_not_go_together(train, message):
  c = _cfg(global_batch_size=16)
  c.train.update(**train)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(c, 2)


@pytest.mark.parametrize("optim,train_samples,message", [
    (dict(lr_warmup_iters=5), 100, "optim.lr_warmup_iters=5 counts steps, train.train_samples samples: set "
                                   "optim.lr_warmup_iters=0 and optim.lr_warmup_samples"),
    (dict(lr_decay_iters=5), 100, "set optim.lr_decay_iters=None and optim.lr_decay_samples"),
    (dict(lr_warmup_samples=64), None, "optim.lr_warmup_samples=64 counts samples, which needs train.train_samples"),
])
def test_iterations_and_samples_do_not_mix(optim, train_samples, message):
  c = _cfg(global_batch_size=16, train_samples=train_samples)
  if train_samples is None:
    c.train.train_iters = 10
  c.optim.update(**optim)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(c, 1)
