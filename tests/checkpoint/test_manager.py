"""Orbax round trip of the train state, restored into a different mesh layout."""
import jax
import numpy as np
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.config import base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules
from moejax.train.optim import make_optimizer
from moejax.train.state import init_state, state_shardings


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
