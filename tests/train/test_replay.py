"""Router replay (moejax/train/replay.py): recorded expert choices reproduce a step's loss."""
import jax
import numpy as np
import pytest
from flax import linen as nn

from moejax.train import replay
from moejax.train.loss import loss_fn
from moejax.train.step import make_train_step


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned", "per-layer"])
def test_replay_reproduces_the_recorded_step_loss(small_moe_config, single_device_setup, small_moe_tokens, tmp_path,
                                                  scan_layers):
  tokens = small_moe_tokens
  cfg = small_moe_config(router_load_balancing_type="aux_loss", aux_loss_coeff=1e-2)
  cfg.model.scan_layers = scan_layers  # ids per segment [repeats, tokens, K], or per layer [tokens, K]
  layout, rules, model, opt, sched, state, _, _ = single_device_setup(cfg)
  path = str(tmp_path / "routing.npz")
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    loss, ids = jax.jit(lambda p, t: replay.record_step(model, p, t))(state.params, tokens)
    replay.save(path, ids)
    step = jax.jit(make_train_step(model, opt, sched))
    later = state
    for _ in range(3):
      later, _ = step(later, tokens)
    replayed = jax.jit(lambda p, t, i: replay.replay_step(model, p, t, i))(state.params, tokens, replay.load(path))
    # with the trained (different) router, replay still routes as recorded
    _, ids_later = jax.jit(lambda p, t: replay.record_step(model, p, t))(later.params, tokens)
    rec = jax.jit(lambda p, t, i: jax.lax.map(
        lambda a: loss_fn(model, p, a[0], replay_ids=a[1], record=True)[1][0]["routing_ids"], (t, i)))(
            later.params, tokens, replay.load(path))
  assert float(replayed) == float(loss)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ids), jax.tree.leaves(ids_later)))
  for a, b in zip(jax.tree.leaves(ids), jax.tree.leaves(rec)):
    np.testing.assert_array_equal(a, b)
