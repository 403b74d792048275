"""The default tiny recipe as it is trains on 1, 2, 4 and 8 devices and with tp=2 + SP, logs its last
step, names its layout, and a rerun has nothing to do.

The global batch is the same on every count, so the first step's LM loss is too; the aux loss is
computed per micro-batch (as in Megatron) and micro-batches grow with dp, so later steps differ a
little."""

import jax
import numpy as np
import pytest

from moejax.config.recipes import load_recipe
from moejax.train.loop import train


def _recipe(repo_root, name="tiny_moe"):
  cfg = load_recipe(str(repo_root / "configs" / f"{name}.py"))
  cfg.train.train_iters = 3
  cfg.logging.tensorboard = False
  return cfg


@pytest.fixture(scope="module")
def one_device(repo_root, tmp_path_factory):
  return train(_recipe(repo_root), str(tmp_path_factory.mktemp("one")), devices=jax.devices()[:1])


# All slow: the default run covers the recipe training (`make train`, the notebook) and tp=2+SP
# against one device on the full model (tests/parallel/test_resume_layouts.py, test_layouts.py).
@pytest.mark.slow
@pytest.mark.parametrize("devices,parallel", [
    (2, {}), (4, {}), (8, {}), (8, dict(tp=2, sequence_parallel=True))], ids=["2", "4", "8", "8-tp2-sp"])
def test_tiny_recipe_trains_on_any_device_count(repo_root, tmp_path, one_device, devices, parallel):
  cfg = _recipe(repo_root)
  cfg.parallel.update(**parallel)
  rows = train(cfg, str(tmp_path), devices=jax.devices()[:devices])
  assert [r["step"] for r in rows] == [1, 2, 3]
  lm, lm_one = ([r["lm_loss"] for r in rs] for rs in (rows, one_device))
  np.testing.assert_allclose(lm[0], lm_one[0], rtol=1e-5)
  np.testing.assert_allclose(lm, lm_one, rtol=2e-3)
  assert lm[2] < lm[0]


def test_last_step_logged_layout_named_and_finished_run_has_nothing_to_do(repo_root, tmp_path, capfd):
  cfg = _recipe(repo_root)
  train(cfg, str(tmp_path), devices=jax.devices()[:2])
  err = capfd.readouterr().err
  assert "2 device(s): tp=1 cp=1 pp=1 ep=1 etp=1 -> dp=2 edp=2" in err
  assert "step 3/3 |" in err  # log_interval=25, but the last step is always shown
  rows = train(cfg, str(tmp_path), devices=jax.devices()[:2])
  err = capfd.readouterr().err
  assert rows == [] and "already at step 3 (train.train_iters=3); nothing to do" in err
  assert "compiled" not in err
