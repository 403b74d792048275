"""A new run's weights from a checkpoint saved with the other layout of the decoder's layers
(`model.scan_layers`): `load_as_run` restores them as saved and lays them out as the run's model,
on the run's mesh, router state (expert biases) included."""
import jax
import numpy as np
from flax import linen as nn

from moejax.checkpoint.manager import save_params
from moejax.config import base_config, model_spec
from moejax.models.decoder import relayout
from moejax.models.gpt import GPTModel
from moejax.train.start import load_as_run, saved_scan_layers
from moejax.train.state import setup


def _cfg(scan_layers, **parallel):
  c = base_config()
  c.model.update(num_layers=3, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=257, dtype="float32", scan_layers=scan_layers)
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16, layer_freq=(0, 1, 1),
               router_score_function="sigmoid", router_enable_expert_bias=True)
  c.parallel.update(**parallel)
  return c


def _equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_weights_of_either_layer_layout_load_into_the_other(tmp_path):
  pattern = model_spec(_cfg(True)).moe_pattern
  for saved_scan, run_scan in ((True, False), (False, True)):
    spec = model_spec(_cfg(saved_scan))
    variables = jax.jit(GPTModel(spec).init)(jax.random.key(saved_scan), np.zeros((1, 16), np.int32))
    params, moe_state = nn.unbox(variables["params"]), variables["moe_state"]
    moe_state = jax.tree.map(lambda a: a + 0.25, moe_state)  # biases that are not the init's zeros
    src = tmp_path / f"saved_scan_{saved_scan}"
    save_params(str(src), params, moe_state)
    parts = setup(_cfg(run_scan, ep=4), jax.devices())  # the run's own state placement, as train.py's
    abstract, shardings, run_spec = parts.abstract, parts.shardings, parts.model.spec
    saved = saved_scan_layers(str(src))
    assert saved is saved_scan
    loaded = load_as_run(str(src), run_spec, {"params": abstract.params, "moe_state": abstract.moe_state},
                         {"params": shardings.params, "moe_state": shardings.moe_state})
    got, got_state = loaded["params"], loaded["moe_state"]
    as_run = lambda t: {**t, "decoder": relayout(t["decoder"], pattern, run_scan)}  # noqa: E731
    _equal(jax.device_get(got), jax.device_get(as_run(params)))
    _equal(jax.device_get(got_state), jax.device_get(as_run(moe_state)))
    assert jax.tree.map(lambda a: a.sharding, got) == shardings.params  # on the run's mesh, as its own layout
