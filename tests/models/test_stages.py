"""The decoder regrouped by pipeline stage: tables, and regrouping back and forth is exact."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.models.stages import StagePlan
from moejax.parallel.pipeline import pipeline_layout


def _plan_and_params(layout, layer_freq):
  c = base_config()
  c.model.update(num_layers=len(layer_freq), hidden_size=16, ffn_hidden_size=32, num_attention_heads=2,
                 num_query_groups=1, vocab_size=64, dtype="float32")
  c.moe.update(num_experts=4, router_topk=2, ffn_hidden_size=8, layer_freq=list(layer_freq),
               router_score_function="sigmoid", router_enable_expert_bias=True)
  c.parallel.update(pp=2, pipeline_layout=layout)
  spec = model_spec(c)
  def init():
    variables = jax.jit(GPTModel(spec).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(1), a.shape),  # no two rows alike
                          nn.unbox(variables["params"]))
    return params, variables["moe_state"]
  params, moe_state = jax.jit(init)()
  return StagePlan.build(spec, pipeline_layout(c)), params, moe_state


def test_uneven_mixed_layout_tables():
  """Layers 0,1 dense then MoE; rank 0 holds layers 0 | 4,5 and rank 1 holds 1,2,3 | 6,7."""
  plan, _, _ = _plan_and_params("Et|ttt|tt|ttL", [0, 0, 1, 1, 1, 1, 1, 1])
  assert plan.kinds == (False, True)
  assert plan.slot_layer[0].tolist() == [[0, -1, -1], [4, 5, -1]]
  assert plan.slot_layer[1].tolist() == [[1, 2, 3], [6, 7, -1]]
  assert plan.slot_kind[1].tolist() == [[0, 1, 1], [1, 1, -1]]
  assert plan.slot_moe[1].tolist() == [[-1, 0, 1], [4, 5, -1]]
  assert plan.has_embedding.tolist() == [[True, False], [False, False]]
  assert plan.has_loss.tolist() == [[False, False], [False, True]]
  assert plan.gather[1].tolist() == [[2, 3, 0, 0], [0, 1, 4, 5]]  # MoE rows: layers 2..7 in order
  assert plan.valid[1].tolist() == [[True, True, False, False], [True] * 4]


@pytest.mark.slow
def test_stage_then_unstage_is_the_identity():
  """Slow: the default pipeline equivalence (tests/train/test_pipeline.py) stages and unstages
  params, MoE state and gradients on every step."""
  for layout, freq in (("Et|ttt|tt|ttL", [0, 0, 1, 1, 1, 1, 1, 1]), ("Ett|ttL", [1, 0, 1, 0]),
                       ("Ettt|tL", [1, 1, 1, 1])):
    plan, params, moe_state = _plan_and_params(layout, freq)
    for tree in (params["decoder"], moe_state["decoder"]):
      like = {k: v for k, v in tree.items() if k.startswith("segment_")}
      back = plan.unstage_tree(plan.stage_tree(tree), like)
      assert jax.tree.structure(back) == jax.tree.structure(like)
      for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(like)):
        np.testing.assert_array_equal(a, b)
    staged = plan.stage_tree(params["decoder"])
    for k, is_moe in enumerate(plan.kinds):  # row q of rank r is the layer the tables say
      for r in range(2):
        for c in range(plan.layout.vpp):
          for j, layer in enumerate(plan.slot_layer[r, c]):
            if layer < 0 or plan.slot_kind[r, c, j] != k:
              continue
            seg, blk, rep = _where(plan, layer)
            want = params["decoder"][seg][blk]["input_norm"]["scale"][rep]
            np.testing.assert_array_equal(staged[k]["input_norm"]["scale"][r, plan.slot_index[r, c, j]], want)


def _where(plan, layer):
  from moejax.models.decoder import layer_segments
  for i, (unit, reps) in enumerate(layer_segments(plan.spec.moe_pattern)):
    if layer < len(unit) * reps:
      return f"segment_{i}", f"block_{layer % len(unit)}", layer // len(unit)
    layer -= len(unit) * reps
