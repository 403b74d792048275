"""The MoE state (moejax/moe/state.py): aux-loss-free expert bias through training and its checkpointing."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.moe.state import ExpertBias, finish_step, updated_expert_bias
from moejax.train.loop import train
from moejax.train.loss import loss_fn
from moejax.train.step import make_train_step


@pytest.fixture(scope="module")
def bias_cfg(small_moe_config):
  def make(bias=True, recompute=None):
    c = small_moe_config(router_score_function="sigmoid", router_enable_expert_bias=bias,
                         router_load_balancing_type="none", aux_loss_coeff=0.0, router_bias_update_rate=1e-2)
    c.train.recompute_granularity = recompute
    return c
  return make


def _bias_leaves(moe_state):
  return [v for p, v in jax.tree_util.tree_leaves_with_path(moe_state) if "expert_bias" in jax.tree_util.keystr(p)]


def test_finish_step_sign_rule_and_counter_reset():
  c = jnp.asarray([[5., 3., 4., 4.], [0., 9., 1., 6.]])
  b = jnp.asarray([[0.1, -0.2, 0.0, 0.3], [0.0, 0.0, 0.0, 0.0]])
  st = {"a": {"router": {"expert_bias": ExpertBias(b, c)}}}
  out = finish_step(st, 1e-3)["a"]["router"]["expert_bias"]
  mean = c.mean(-1, keepdims=True)
  np.testing.assert_array_equal(out.expert_bias, b + 1e-3 * np.sign(mean - c))
  np.testing.assert_array_equal(out.expert_bias, updated_expert_bias(c, b, 1e-3))
  assert not np.asarray(out.local_tokens_per_expert).any()


@pytest.mark.parametrize("recompute", [None, "full"])
def test_step_sums_counts_over_micro_batches_then_updates_bias(bias_cfg, single_device_setup, small_moe_tokens,
                                                              recompute):
  tokens = small_moe_tokens
  cfg = bias_cfg(recompute=recompute)
  layout, rules, model, opt, sched, state, _, _ = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    counts = [loss_fn(model, state.params, tokens[i], state.moe_state)[1][0]["tokens_per_expert"]
              for i in range(2)]
    bias0 = _bias_leaves(state.moe_state)[0]
    new_state, metrics = jax.jit(make_train_step(model, opt, sched))(state, tokens)
  total = np.asarray(counts[0]) + np.asarray(counts[1])  # [L, E]
  np.testing.assert_array_equal(metrics["tokens_per_expert"], total)
  assert total.sum() == 2 * 4 * 32 * 2 * cfg.model.num_layers
  bias1 = np.asarray(_bias_leaves(new_state.moe_state)[0]).reshape(total.shape)
  np.testing.assert_array_equal(bias1, np.asarray(bias0).reshape(total.shape)
                                + 1e-2 * np.sign(total.mean(-1, keepdims=True) - total))
  counters = [v for p, v in jax.tree_util.tree_leaves_with_path(new_state.moe_state)
              if "local_tokens" in jax.tree_util.keystr(p)]
  assert counters and not any(np.asarray(v).any() for v in counters)


def test_expert_bias_survives_a_checkpoint(tmp_path, bias_cfg, single_device_setup, small_moe_tokens):
  tokens = small_moe_tokens
  cfg = bias_cfg()
  layout, rules, model, opt, sched, state, abstract, shardings = single_device_setup(cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    state, _ = jax.jit(make_train_step(model, opt, sched))(state, tokens)
    assert np.abs(np.asarray(_bias_leaves(state.moe_state)[0])).max() > 0
    ckpt = CheckpointManager(str(tmp_path), 1, 2, async_save=False)
    ckpt.save(1, state, {"step": 1}, force=True)
    ckpt.wait()
    restored, _ = ckpt.restore(abstract, shardings)
    ckpt.close()
  for a, b in zip(jax.tree.leaves(state.moe_state), jax.tree.leaves(restored.moe_state)):
    np.testing.assert_array_equal(a, b)


def _imbalance(history, last):
  return float(np.mean([h["moe_load_imbalance"] for h in history[-last:]]))


def test_expert_bias_lowers_load_imbalance(tmp_path, bias_cfg):
  """Short in-process version of the 200-step tiny-config comparison (same config otherwise)."""
  runs = {}
  for bias in (False, True):
    cfg = bias_cfg(bias=bias)
    cfg.train.update(train_iters=60, micro_batch_size=8, global_batch_size=8, log_interval=1000)
    cfg.optim.update(lr=3e-3, lr_warmup_iters=5)
    cfg.logging.tensorboard = False
    cfg.checkpoint.save_interval = 10000
    runs[bias] = train(cfg, str(tmp_path / f"bias{int(bias)}"), devices=jax.devices()[:1])
  without, with_bias = _imbalance(runs[False], 15), _imbalance(runs[True], 15)
  assert with_bias < without, (with_bias, without)
