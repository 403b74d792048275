"""Orbax round trip of the train state, restored into a different mesh layout; verification,
fallback past damaged checkpoints, retention, refusal of checkpoints that do not fit."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.config import RunError, base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules
from moejax.train.optim import make_optimizer
from moejax.train.state import init_state, setup, state_shardings


def _setup(**parallel):
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16)
  c.train.update(seq_length=16)
  c.parallel.update(**parallel)
  layout = make_mesh(c, jax.devices())
  rules = logical_axis_rules(layout, c.parallel.sequence_parallel)
  model, opt = GPTModel(model_spec(c)), make_optimizer(c)
  with nn.logical_axis_rules(rules):
    abstract, shardings = state_shardings(model, opt, 16, layout.mesh, rules)
  return layout, rules, model, opt, abstract, shardings


def test_restore_into_another_layout(tmp_path):
  layout, rules, model, opt, _, shardings = _setup()  # dp=8, everything replicated
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    state = init_state(model, opt, 16, 0, shardings)
  ckpt = CheckpointManager(str(tmp_path), save_interval=1, max_to_keep=1)
  ckpt.save(3, state, {"step": 3}, force=True)
  ckpt.close()

  layout2, _, _, _, abstract2, shardings2 = _setup(ep=4)  # experts now sharded 4 ways
  ckpt = CheckpointManager(str(tmp_path), save_interval=1, max_to_keep=1)
  restored, meta = ckpt.restore(abstract2, shardings2)
  ckpt.close()
  assert meta == {"step": 3}
  w1 = restored.params["decoder"]["segment_0"]["block_0"]["moe"]["experts"]["w1"]
  assert w1.sharding == shardings2.params["decoder"]["segment_0"]["block_0"]["moe"]["experts"]["w1"]
  assert len(w1.addressable_shards[0].data) * 4 == len(w1) or w1.addressable_shards[0].data.shape[1] * 4 == w1.shape[1]
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------- verification and fallback (issue 17)
@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, small_moe_config, single_device_setup):
  """A workdir with checkpoints 1 and 2 (different states) of the small MoE model on one device."""
  _, _, _, _, _, state, abstract, shardings = single_device_setup(small_moe_config())
  workdir = tmp_path_factory.mktemp("two") / "run"
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=5) as ckpt:
    ckpt.save(1, state.replace(step=state.step + 1))
    ckpt.save(2, state.replace(step=state.step + 2, params=jax.tree.map(lambda p: p + 1, state.params)))
  return workdir, abstract, shardings


def _array_files(step_dir):
  return [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state", "ocdbt.process_0"))
          for f in fs]


DAMAGE = {
    "truncated array file": lambda d: [os.truncate(f, os.path.getsize(f) // 2) for f in _array_files(d)],
    "deleted array file": lambda d: os.remove(max(_array_files(d), key=os.path.getsize)),
    "deleted state/_METADATA": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "deleted state/": lambda d: shutil.rmtree(os.path.join(d, "state")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_an_unreadable_checkpoint_is_one_line_moved_aside_and_the_previous_one_restored(two_steps, tmp_path,
                                                                                         capfd, damage):
  """Finding 3: each of these ended in a 100-160-line traceback instead of a line and a fallback."""
  base, abstract, shardings = two_steps
  workdir = tmp_path / "run"
  shutil.copytree(base, workdir)
  DAMAGE[damage](str(workdir / "checkpoints" / "2"))
  capfd.readouterr()
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=5) as ckpt:
    state, meta = ckpt.restore(abstract, shardings)
  err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
  assert int(state.step) == 1 and meta == {"step": 1}
  assert len(err) == 1, err
  assert err[0].startswith("checkpoint step 2 is damaged (") and "Traceback" not in err[0]
  assert err[0].endswith(f"moved aside to {workdir}/checkpoints/2.corrupt; trying the previous one")
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2.corrupt"]


def _refusal(base, cfg) -> str:
  """The error of restoring `base`'s newest checkpoint into the state of `cfg` on one device."""
  parts = setup(cfg, jax.devices()[:1])
  with CheckpointManager(str(base), save_interval=1, max_to_keep=5) as ckpt:
    with pytest.raises(RunError) as e:
      ckpt.restore(parts.abstract, parts.shardings)
  return str(e.value)


def test_a_changed_expert_count_is_refused_naming_the_keys(two_steps, small_moe_config):
  """Finding 7 on the MoE model: moe.num_experts=16 on an 8-expert checkpoint."""
  base, _, _ = two_steps
  cfg = small_moe_config()
  cfg.moe.num_experts = 16
  msg = _refusal(base, cfg)
  assert "\n" not in msg and "params.decoder.segment_0.block_0.moe.experts.w1 is [2, 8, 32, 64] there, " \
      "[2, 16, 32, 64] in the config" in msg and "(and 6 more)" in msg
  assert f"--config.checkpoint.load_params={base}" in msg
  assert sorted(os.listdir(base / "checkpoints")) == ["1", "2"]


def test_another_layer_layout_is_refused_naming_scan_layers(two_steps, small_moe_config):
  """A run with model.scan_layers=False on a checkpoint of stacked layers: one line that names
  the setting, not a list of missing keys."""
  base, _, _ = two_steps
  cfg = small_moe_config()
  cfg.model.scan_layers = False
  msg = _refusal(base, cfg)
  assert "the checkpoint holds the decoder's layers stacked (model.scan_layers=True) and the config wants " \
      "them one by one (model.scan_layers=False)" in msg and "\n" not in msg


@pytest.mark.parametrize("restore", ["resume", "load_params"])
def test_a_changed_dtype_is_cast_not_taken_for_damage(two_steps, small_moe_config, capfd, restore):
  """model.params_dtype=bfloat16 and bf16 Adam moments on fp32 checkpoints: the arrays are verified as
  saved and cast after (one line says so), nothing is moved aside; it was a checksum mismatch that
  moved every checkpoint of the run to <step>.corrupt."""
  base, _, _ = two_steps
  with CheckpointManager(str(base), save_interval=1, max_to_keep=5) as ckpt:
    saved, _ = ckpt.restore(*two_steps[1:])
  cfg = small_moe_config()
  cfg.model.params_dtype = "bfloat16"
  cfg.optim.update(use_precision_aware_optimizer=True, exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16")
  parts = setup(cfg, jax.devices()[:1])
  capfd.readouterr()
  if restore == "resume":
    with CheckpointManager(str(base), save_interval=1, max_to_keep=5) as ckpt:
      state, meta = ckpt.restore(parts.abstract, parts.shardings)
    assert meta == {"step": 2} and jax.tree.map(lambda a: a.dtype, state.opt_state) == \
        jax.tree.map(lambda a: a.dtype, parts.abstract.opt_state)
    params = state.params
  else:
    from moejax.checkpoint.manager import load_weights
    params = load_weights(str(base), {"params": parts.abstract.params}, {"params": parts.shardings.params})["params"]
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(saved.params)):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want.astype(jnp.bfloat16), np.float32))
  err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
  assert len(err) == 1 and "arrays cast to the config's dtypes (float32 -> bfloat16)" in err[0], err
  assert sorted(os.listdir(base / "checkpoints")) == ["1", "2"]


def test_retention_keeps_the_last_n_every_kth_and_the_verified_one(two_steps, tmp_path):
  base, abstract, shardings = two_steps
  workdir = tmp_path / "run"
  shutil.copytree(base, workdir)
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=2, async_save=False, keep_interval=4) as ckpt:
    state, _ = ckpt.restore(abstract, shardings)  # step 2 passes verification: kept from now on
    for step in range(3, 10):
      ckpt.save(step, state.replace(step=state.step * 0 + step))
  assert sorted(map(int, os.listdir(workdir / "checkpoints"))) == [2, 4, 8, 9]


def test_retention_renames_old_checkpoints_aside_before_removing_them(two_steps, tmp_path):
  """Orbax removes a step directory file by file: killed halfway, what is left under the step's own
  name is listed as a complete checkpoint (a kill -9 test caught one). Retention renames it into
  checkpoints/deleted/ first, which the manager empties at each save and at close; a half-removed
  leftover there is never taken for a checkpoint."""
  base, abstract, shardings = two_steps
  workdir = tmp_path / "run"
  shutil.copytree(base, workdir)
  ckdir = workdir / "checkpoints"
  with CheckpointManager(str(workdir), save_interval=1, max_to_keep=2, async_save=False) as ckpt:
    state, _ = ckpt.restore(abstract, shardings)  # step 2 pinned
    for step in (3, 4, 5):
      ckpt.save(step, state.replace(step=state.step * 0 + step))
    assert sorted(os.listdir(ckdir)) == ["2", "4", "5", "deleted"]
    assert os.listdir(ckdir / "deleted") == ["3"]
    shutil.rmtree(ckdir / "deleted" / "3" / "meta")  # a removal killed halfway
    assert ckpt.all_steps() == [2, 4, 5]
    ckpt.save(6, state.replace(step=state.step * 0 + 6))  # empties deleted/, then 4 goes there
    assert os.listdir(ckdir / "deleted") == ["4"]
  assert sorted(os.listdir(ckdir)) == ["2", "5", "6"]


@pytest.mark.parametrize("async_save", [False, True])
def test_a_state_holding_nan_is_not_saved(two_steps, tmp_path, capfd, async_save):
  base, abstract, shardings = two_steps
  with CheckpointManager(str(base), save_interval=1, max_to_keep=5) as ckpt:
    state, _ = ckpt.restore(abstract, shardings)
  bad = state.replace(params=jax.tree.map(lambda p: p.at[(0,) * p.ndim].set(jnp.nan), state.params))
  with CheckpointManager(str(tmp_path / "run"), save_interval=1, max_to_keep=5, async_save=async_save) as ckpt:
    assert ckpt.save(3, bad, force=True) == async_save  # an async save checks in the background
    assert ckpt.latest_step() is None
  assert "step 3: not saved: the state holds NaN or inf in params." in capfd.readouterr().err
