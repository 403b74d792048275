"""The logits tool: one-line errors, and a training run's weights read as its converted ones (its
output is checked against HF in tests/convert)."""
import jax
import numpy as np
import pytest

from moejax.checkpoint.manager import load_weights, save_params
from moejax.config.recipes import load_recipe
from moejax.train.loop import train
from moejax.train.state import setup
from moejax.tools.logits import logits, main


@pytest.mark.parametrize("args,message", [
    (["--tokens", "1,x"], "--tokens '1,x' must be comma-separated integers"),
    (["--tokens", ","], "--tokens is empty"),
    (["--tokens", "1,2"], "has no moejax_config.json: pass --config RECIPE"),
    (["--tokens", "1,2", "--config", "configs/tiny_moe.py"], "no weights there; give a weights-only checkpoint"),
    (["--tokens", "1,2", "--config", "configs/nope.py"], "--config configs/nope.py: no such file"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, repo_root, args, message):
  monkeypatch.chdir(repo_root)
  with pytest.raises(SystemExit) as e:
    main(["--params", str(tmp_path), "--out", str(tmp_path / "l.npy"), *args])
  assert message in str(e.value) and "\n" not in str(e.value)


def test_a_training_run_gives_the_logits_of_its_weights(tmp_path, repo_root):
  """The tool took only a converted checkpoint (DIR/params) and refused a training workdir or step,
  which train.py's checkpoint.load_params takes. The tiny recipe with aux-loss-free routing, one
  step: the workdir, its checkpoint and the same weights and expert biases saved weights-only
  give the same logits, and they are not those of the weights without their biases."""
  cfg = load_recipe(str(repo_root / "configs" / "tiny_moe.py"))
  cfg.moe.update(router_score_function="sigmoid", router_enable_expert_bias=True, router_bias_update_rate=0.5)
  cfg.train.update(train_iters=1, global_batch_size=2, micro_batch_size=1)
  cfg.data.source, cfg.logging.tensorboard = "synthetic", False
  run = tmp_path / "run"
  train(cfg, str(run), devices=jax.devices()[:1])
  parts = setup(cfg, jax.devices()[:1])
  items = lambda s: {"params": s.params, "moe_state": s.moe_state}  # noqa: E731
  weights = load_weights(str(run), items(parts.abstract), items(parts.shardings))
  save_params(str(tmp_path / "converted"), weights["params"], weights["moe_state"])
  save_params(str(tmp_path / "no_biases"), weights["params"])
  tokens = [3, 1, 4, 1, 5, 9, 2, 6]
  want = logits(cfg, str(tmp_path / "converted"), tokens)
  np.testing.assert_array_equal(logits(cfg, str(run), tokens), want)
  np.testing.assert_array_equal(logits(cfg, str(run / "checkpoints" / "1"), tokens), want)
  assert not np.array_equal(logits(cfg, str(tmp_path / "no_biases"), tokens), want)
