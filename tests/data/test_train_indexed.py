"""End to end: JSONL -> preprocess -> .bin/.idx -> train.py (tiny recipe) with evaluation,
and a resumed run that sees exactly the batches of an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from moejax.data.preprocess import preprocess

STEPS, EVAL_INTERVAL, EVAL_ITERS = 8, 4, 2


def _overrides(prefix, workdir_cache):
    return [f"--config.data.source=indexed", f"--config.data.path=('{prefix}',)",
            "--config.data.split=90,8,2", f"--config.data.cache_dir={workdir_cache}",
            f"--config.train.train_iters={STEPS}", "--config.train.seq_length=64",
            "--config.train.micro_batch_size=4", "--config.train.global_batch_size=8",
            f"--config.train.eval_interval={EVAL_INTERVAL}", f"--config.train.eval_iters={EVAL_ITERS}",
            "--config.train.log_interval=1", "--config.checkpoint.save_interval=4",
            "--config.checkpoint.async_save=False", "--config.logging.tensorboard=False"]


def _train(repo, workdir, overrides):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1")
    proc = subprocess.run([sys.executable, str(repo / "train.py"), "--config",
                           str(repo / "configs" / "tiny_moe.py"), "--workdir", str(workdir), *overrides],
                          capture_output=True, text=True, timeout=600, env=env, cwd=repo)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(workdir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f], proc.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import pydoc_data.topics as topics
    d = tmp_path_factory.mktemp("e2e")
    with open(d / "docs.jsonl", "w") as f:
        for k in sorted(topics.topics):
            f.write(json.dumps({"text": topics.topics[k]}) + "\n")
    prefix = preprocess(str(d / "docs.jsonl"), str(d / "pydoc"), ["text"], "byte",
                        append_eod=True, workers=2, progress=False)["text"]
    return d, prefix


@pytest.fixture(scope="module")
def uninterrupted(corpus):
    from pathlib import Path
    repo = Path(__file__).resolve().parents[2]
    d, prefix = corpus
    records, stderr = _train(repo, d / "run_a", _overrides(prefix, d / "cache"))
    return repo, records, stderr


def test_tiny_recipe_trains_from_preprocessed_jsonl(uninterrupted):
    _, records, stderr = uninterrupted
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    assert all(np.isfinite(r["loss"]) for r in train)
    assert train[-1]["lm_loss"] < train[0]["lm_loss"] - 0.5   # it learns (bytes: ~5.5 nats at init)
    evals = [r for r in records if "eval_loss" in r]
    assert [r["step"] for r in evals] == [EVAL_INTERVAL, 2 * EVAL_INTERVAL]
    for r in evals:
        assert np.isclose(r["eval_ppl"], np.exp(r["eval_loss"]))
    assert "eval_loss" in stderr and "eval_ppl" in stderr


def test_resumed_run_sees_the_same_batches(corpus, uninterrupted):
    """Resume from the step-4 checkpoint of run A: steps 5..8 (losses, and the evaluation at
    step 8) are bit-identical to run A's, which they can only be if the batches are."""
    repo, records_a, _ = uninterrupted
    d, prefix = corpus
    b = d / "run_b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copytree(d / "run_a" / "checkpoints" / "4", b / "checkpoints" / "4")
    records_b, stderr = _train(repo, b, _overrides(prefix, d / "cache"))
    assert "resumed from checkpoint at step 4" in stderr
    a = {r["step"]: r for r in records_a}
    got = [r for r in records_b if "loss" in r]
    assert [r["step"] for r in got] == list(range(5, STEPS + 1))
    for r in got:
        assert r["loss"] == a[r["step"]]["loss"], r["step"]
    assert got[-1]["eval_loss"] == a[STEPS]["eval_loss"]
