"""MoE load pictures of a tiny run: PNGs from metrics.jsonl, and the same in TensorBoard."""
import glob
import os

import jax
import pytest

from moejax.tools.plot_moe_load import main
from moejax.train.loop import train


def test_plots_of_a_tiny_run(small_moe_config, tmp_path, capsys):
  cfg = small_moe_config(aux_loss_coeff=1e-2)
  cfg.train.update(train_iters=4, log_interval=2)
  cfg.logging.moe_per_layer = True
  train(cfg, str(tmp_path), devices=jax.devices()[:1])
  main(["--workdir", str(tmp_path), "--steps", "1,4"])
  paths = capsys.readouterr().out.split()
  assert [os.path.basename(p) for p in paths] == ["moe_load_step1.png", "moe_load_step4.png", "moe_imbalance.png",
                                                   "moe_aux_loss.png"]
  for p in paths:
    data = open(p, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, p
  events = b"".join(open(f, "rb").read() for f in glob.glob(str(tmp_path / "tensorboard" / "events.*")))
  assert b"moe/layer_1/tokens_per_expert" in events and b"moe/token_share" in events
  with pytest.raises(SystemExit, match="--steps \\[9\\] not in"):
    main(["--workdir", str(tmp_path), "--steps", "9"])


def test_steps_that_are_not_numbers_are_a_usage_error(tmp_path, capsys):
  """--steps x ended in a ValueError traceback from int()."""
  with pytest.raises(SystemExit) as e:
    main(["--workdir", str(tmp_path), "--steps", "1,x"])
  assert e.value.code == 2
  assert "argument --steps: '1,x' is not a comma-separated list of step numbers" in capsys.readouterr().err
