"""Weights-only checkpoints: saved on one layout, a new run starts from them on another."""
import jax
import numpy as np
from flax import linen as nn

from moejax.checkpoint.manager import load_params, save_params
from moejax.config import base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import logical_axis_rules
from moejax.train.loop import train


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


def test_a_new_run_starts_from_saved_weights_on_another_layout(tmp_path):
  cfg = _cfg()
  params = nn.unbox(GPTModel(model_spec(cfg)).init(jax.random.key(3), jax.numpy.zeros((1, 16), "int32"))["params"])
  save_params(str(tmp_path / "weights"), params)

  cfg = _cfg(ep=4)
  layout = make_mesh(cfg)
  rules = logical_axis_rules(layout)
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(GPTModel(model_spec(cfg)).init, jax.random.key(0), jax.numpy.zeros((8, 16), "int32"))
    shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed["params"]), layout.mesh, rules)
  restored = load_params(str(tmp_path / "weights"), nn.unbox(boxed["params"]), shardings)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  w1 = restored["decoder"]["segment_0"]["block_0"]["moe"]["experts"]["w1"]
  assert w1.sharding.spec[1] == "dp_ep"  # [layers, experts, ...]: experts sharded over ep on the new layout

  cfg.checkpoint.load_params = str(tmp_path / "weights")
  rows = train(cfg, str(tmp_path / "run"))
  fresh = train(_cfg(ep=4), str(tmp_path / "fresh"))
  assert rows[0]["step"] == 1 and rows[0]["loss"] != fresh[0]["loss"]  # the loaded weights, not a fresh init
