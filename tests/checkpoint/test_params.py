"""Weights-only starts (`checkpoint.load_params`): from a weights-only checkpoint, a training
workdir or one of its checkpoints, on any layout; a new run at step 0 with a fresh optimizer (the
full resume, optimizer included, is a workdir's own checkpoints: tests/parallel/test_resume_layouts.py)."""
import os
import shutil

import jax
import numpy as np
import pytest
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager, load_weights, save_params
from moejax.config import RunError, base_config, model_spec
from moejax.data.loader import make_dataset
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules
from moejax.train.loop import make_eval_step, train
from moejax.train.optim import make_optimizer
from moejax.train.state import state_shardings


def _cfg(**parallel):
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=257, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16)
  c.train.update(seq_length=16, micro_batch_size=1, global_batch_size=8, train_iters=1)
  c.data.source = "synthetic"
  c.logging.tensorboard = False
  c.parallel.update(**parallel)
  return c


def _abstract(cfg, devices):
  layout = make_mesh(cfg, devices)
  rules = logical_axis_rules(layout)
  with nn.logical_axis_rules(rules):
    return state_shardings(GPTModel(model_spec(cfg)), make_optimizer(cfg), 16, layout.mesh, rules)


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A training workdir on one device with checkpoints 1 and 2 (other weights than a fresh init)."""
  cfg = _cfg()
  abstract, shardings = _abstract(cfg, jax.devices()[:1])
  params = [jax.jit(lambda k: nn.unbox(GPTModel(model_spec(cfg)).init(k, np.zeros((1, 16), np.int32))["params"]),
                    out_shardings=shardings.params)(jax.random.key(seed)) for seed in (3, 4)]
  workdir = tmp_path_factory.mktemp("source") / "run"
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=5) as ckpt:
    for step, p in ((1, params[0]), (2, params[1])):
      state = jax.tree.map(lambda a, s: jax.device_put(np.zeros(a.shape, a.dtype), s), abstract, shardings)
      ckpt.save(step, state.replace(params=p, step=state.step + step))
  save_params(str(workdir.parent / "weights"), params[0])
  return workdir, params


def load_params(directory, abstract_params, shardings):
  """The weights alone of `load_weights`."""
  return load_weights(directory, {"params": abstract_params}, {"params": shardings})["params"]


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_load_params_takes_weights_a_workdir_or_one_of_its_checkpoints(source_run, tmp_path, capfd):
  workdir, params = source_run
  abstract, shardings = _abstract(_cfg(ep=4), jax.devices())
  _equal(load_params(str(workdir.parent / "weights"), abstract.params, shardings.params), params[0])
  _equal(load_params(str(workdir), abstract.params, shardings.params), params[1])  # its newest checkpoint
  got = load_params(str(workdir / "checkpoints" / "1"), abstract.params, shardings.params)
  _equal(got, params[0])
  w1 = got["decoder"]["segment_0"]["block_0"]["moe"]["experts"]["w1"]
  assert w1.sharding.spec[1] == "dp_ep"  # [layers, experts, ...]: experts sharded over ep on the new layout
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  shutil.rmtree(damaged / "checkpoints" / "2" / "state")
  _equal(load_params(str(damaged), abstract.params, shardings.params), params[0])  # falls back, moves nothing
  assert f"{damaged}/checkpoints/2 is damaged" in capfd.readouterr().err
  assert sorted(os.listdir(damaged / "checkpoints")) == ["1", "2"]
  with pytest.raises(RunError, match=f"checkpoint.load_params={tmp_path}: no weights there"):
    load_params(str(tmp_path), abstract.params, shardings.params)


def test_a_new_run_starts_from_another_runs_weights_on_another_layout(source_run, tmp_path):
  """Weights of the 1-device run's newest checkpoint, a new run under ep=4 on 8 devices: step 1's
  loss is the loss of exactly those weights on batch 0."""
  workdir, params = source_run
  cfg = _cfg(ep=4)
  cfg.checkpoint.load_params = str(workdir)
  rows = train(cfg, str(tmp_path / "run"), devices=jax.devices())
  assert [r["step"] for r in rows] == [1]
  batch = make_dataset(cfg, 8)[0]
  want = float(jax.jit(make_eval_step(GPTModel(model_spec(cfg))))(params[1], batch)[0])
  assert rows[0]["lm_loss"] == pytest.approx(want, rel=1e-5)


def test_a_new_run_keeps_the_router_state_of_the_run_it_starts_from(tmp_path, capfd):
  """The expert biases of aux-loss-free routing live in a train state's moe_state: a new run from a
  training workdir took its weights and started the biases from zero (only a weights-only DIR/moe_state
  was read), and one whose newest checkpoint was damaged stopped in an AttributeError. Weights and
  biases now come from the same checkpoint, the newest that verifies (update rate 0: the biases the
  new run saves at its step 1 are the ones it loaded)."""
  cfg = _cfg()
  cfg.moe.update(router_score_function="sigmoid", router_enable_expert_bias=True, router_bias_update_rate=0.0)
  abstract, shardings = _abstract(cfg, jax.devices()[:1])
  workdir = tmp_path / "source"
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=5) as ckpt:
    for step in (1, 2):
      state = jax.tree.map(lambda a, s: jax.device_put(np.full(a.shape, step / 4, a.dtype), s), abstract, shardings)
      ckpt.save(step, state.replace(step=state.step * 0 + step))
  abstract_new, shardings_new = _abstract(cfg.copy_and_resolve_references(), jax.devices())
  items = lambda a: {"params": a.params, "moe_state": a.moe_state}  # noqa: E731
  got = load_weights(str(workdir), items(abstract_new), items(shardings_new))
  assert jax.tree.leaves(got["moe_state"])
  for leaf in jax.tree.leaves(got):
    np.testing.assert_array_equal(leaf, np.full(leaf.shape, 0.5))  # step 2's, both items
  damaged = tmp_path / "damaged"
  shutil.copytree(workdir, damaged)
  shutil.rmtree(damaged / "checkpoints" / "2" / "state")
  run = cfg.copy_and_resolve_references()
  run.parallel.ep = 4
  run.checkpoint.load_params = str(damaged)
  train(run, str(tmp_path / "run"), devices=jax.devices())
  assert f"{damaged}/checkpoints/2 is damaged (its state/ directory is missing)" in capfd.readouterr().err
  saved = load_weights(str(tmp_path / "run"), items(abstract_new), items(shardings_new))["moe_state"]
  biases = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(saved) if "expert_bias" in str(path[-1])]
  assert biases  # (the token counts beside them start each step from zero)
  for leaf in biases:
    np.testing.assert_array_equal(leaf, np.full(leaf.shape, 0.25))  # step 1's biases, not zeros
