"""Full resume across layouts on 8 emulated devices (issue 17): the tiny MoE model trained 20 steps
under ep=4 and saved, restored under (tp=2 with SP, ep=2) and under (all sizes 1, dp=8), continues
10 steps with the losses of the uninterrupted run (fp32, 1e-5): params, optimizer state and step
all come back, whatever the layout they were saved from.

The micro-batch size follows dp so every layout runs one micro-batch of the same 8 sequences per
step (the aux loss is per micro-batch)."""
import json
import shutil

import jax
import pytest

from moejax.train.loop import train


def _cfg(small_moe_config, micro_batch_size=1, **parallel):
  c = small_moe_config()
  c.moe.update(aux_loss_coeff=1e-2, z_loss_coeff=1e-3)  # the tiny recipe's losses
  c.train.update(seq_length=16, micro_batch_size=micro_batch_size, global_batch_size=8, train_iters=30,
                 log_interval=100)
  c.optim.update(lr=3e-3, min_lr=3e-4, lr_warmup_iters=5)
  c.checkpoint.update(save_interval=20, max_to_keep=5)
  c.logging.tensorboard = False
  c.parallel.update(**parallel)
  return c


@pytest.fixture(scope="module")
def uninterrupted(small_moe_config, tmp_path_factory):
  """30 steps under ep=4 (checkpoints 20 and 30): the reference, and the checkpoint at 20 to resume."""
  workdir = tmp_path_factory.mktemp("ep4") / "run"
  rows = train(_cfg(small_moe_config, ep=4), str(workdir), devices=jax.devices())
  return workdir, {r["step"]: r for r in rows}


@pytest.mark.parametrize("micro,parallel", [pytest.param(2, dict(tp=2, sequence_parallel=True, ep=2), marks=pytest.mark.slow),
                                             (1, {})], ids=["tp2-sp-ep2", "dp8"])
def test_resume_under_another_layout_continues_the_same_losses(uninterrupted, small_moe_config, tmp_path, capfd,
                                                               micro, parallel):
  source, ref = uninterrupted
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  shutil.rmtree(workdir / "checkpoints" / "30")  # as if this run had stopped at step 20
  rows = train(_cfg(small_moe_config, micro, **parallel), str(workdir), devices=jax.devices())
  assert "resumed from checkpoint at step 20" in capfd.readouterr().err
  assert [r["step"] for r in rows] == list(range(21, 31))
  for r in rows:
    assert r["loss"] == pytest.approx(ref[r["step"]]["loss"], rel=1e-5, abs=1e-6), r["step"]
  logged = [json.loads(line)["step"] for line in open(workdir / "metrics.jsonl")]
  assert logged == list(range(1, 31))
