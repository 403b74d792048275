"""Issue 6 rehearsal on 8 emulated CPU devices: the Mixtral recipe's layout (EP=8 over all
devices) at a scaled-down width, checkpointed, then resumed under another layout (EP=4)."""
import json
import os
import subprocess
import sys

import pytest

SCALED = ["--config.model.num_layers=2", "--config.model.hidden_size=64", "--config.model.ffn_hidden_size=128",
          "--config.moe.ffn_hidden_size=128", "--config.model.num_attention_heads=8",
          "--config.model.num_query_groups=8", "--config.model.vocab_size=512", "--config.train.seq_length=64",
          "--config.train.global_batch_size=8", "--config.model.dtype=float32",
          "--config.checkpoint.save_interval=3", "--config.optim.lr_warmup_iters=1",
          "--config.optim.lr_decay_iters=5", "--config.parallel.tp=1", "--config.parallel.etp=1"]


def _run(repo, workdir, extra):
  env = {**os.environ, "JAX_NUM_CPU_DEVICES": "8"}
  out = subprocess.run([sys.executable, "train.py", "--config", "configs/mixtral_8x7b.py", "--workdir", str(workdir),
                        *SCALED, *extra], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stderr


@pytest.mark.slow
def test_mixtral_layout_ep8_then_resume_ep4(repo_root, tmp_path):
  ref = tmp_path / "ref"
  _run(repo_root, ref, ["--config.parallel.ep=8", "--config.train.train_iters=5"])
  run = tmp_path / "run"
  _run(repo_root, run, ["--config.parallel.ep=8", "--config.train.train_iters=3"])
  err = _run(repo_root, run, ["--config.parallel.ep=4", "--config.train.train_iters=5"])
  assert "resumed from checkpoint at step 3" in err
  rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
  want = [json.loads(line) for line in open(ref / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
  for a, b in zip(want, rows):  # same data and optimizer trajectory, only the layout changed
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
