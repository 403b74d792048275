"""The model-zoo recipes: published sizes, a valid layout for their GPU count, model state that fits.

Totals are checked within 0.5% of the published figure, active parameters within 1%. Active
counts every parameter a token's forward pass multiplies by (embedding and head included, the
routed top-k experts only), the convention that gives Mistral's 12.9B for Mixtral 8x7B. Several
published active sizes are rounded to two digits ("3.3B", "14B", "37B") and, whatever the
convention, cannot all be met within 1%: those are strict xfails naming our exact count.
"""
import pathlib

import jax
import pytest
from flax import linen as nn

from moejax.config import model_spec
from moejax.config.recipes import load_recipe
from moejax.metrics.flops import num_params
from moejax.models.gpt import GPTModel
from moejax.train.validate import validate

REPO = pathlib.Path(__file__).resolve().parents[2]
H200_BYTES = 141e9
BYTES_PER_PARAM = 4 + 4 + 4 + 8  # fp32 master, accumulated grads, this micro-batch's grads, Adam m and v


def _rounded(active_b, why):
  return pytest.mark.xfail(strict=True, reason=f"ours {active_b}B; {why}")


# recipe: (published total, published active, GPUs it is laid out for, marks on the active check)
RECIPES = {
    "mixtral_8x7b": (46.7e9, 12.9e9, 16, ()),
    "mixtral_8x22b": (141e9, 39e9, 64, ()),
    "qwen2_57b_a14b": (57.4e9, 14e9, 32, _rounded(14.25, "published '14B' (Qwen2 report), two digits")),
    "qwen3_30b_a3b": (30.5e9, 3.3e9, 16, _rounded(3.35, "published '3.3B' (model card), two digits")),
    "qwen3_235b_a22b": (235e9, 22e9, 128, ()),
    "deepseek_v2_lite": (15.7e9, 2.4e9, 8, _rounded(2.66, "published '2.4B'; 2.45B without the input embedding")),
    "deepseek_v2": (236e9, 21e9, 256, _rounded(21.38, "published '21B'; 20.85B without the input embedding")),
    "deepseek_v3": (671e9, 37e9, 512, _rounded(37.55, "published '37B'; 36.63B without the input embedding")),
    "glm4_5_air": (106e9, 12e9, 64, _rounded(13.42, "published '12B' (report, Table 1) counts no embedding or head: "
                                                   "12.18B without them")),
    "glm4_5": (355e9, 32e9, 256, _rounded(33.63, "published '32B' (report, Table 1) counts no embedding or head: "
                                                 "32.08B without them")),
}
# published totals that match no convention within 0.5% (rounded in the report; the checkpoints,
# which also store each MTP layer's copy of the embedding and head, hold 110B and 358B as HF counts them)
TOTAL_MARKS = {
    "glm4_5_air": pytest.mark.xfail(strict=True, reason="no exact published total: the report's '106B' is rounded; "
                                                        "ours 106.85B (109.23B with the MTP layer, 110.47B as the "
                                                        "checkpoint stores it, the Hub's 110B)"),
    "glm4_5": pytest.mark.xfail(strict=True, reason="no exact published total: the report's '355B' is rounded; "
                                                    "ours 352.80B (356.79B with the MTP layer, 358.34B as the "
                                                    "checkpoint stores it, the Hub's 358B)"),
}


def _recipe(name):
  return load_recipe(str(REPO / "configs" / f"{name}.py"))


@pytest.fixture(scope="module", params=sorted(RECIPES))
def recipe(request):
  """(name, config, spec, boxed abstract params of the full model: nothing allocated)."""
  cfg = _recipe(request.param)
  spec = model_spec(cfg)
  boxed = jax.eval_shape(GPTModel(spec).init, jax.random.key(0), jax.ShapeDtypeStruct((1, 8), "int32"))["params"]
  return request.param, cfg, spec, boxed


def test_the_formula_is_the_built_model(recipe):
  _, _, spec, boxed = recipe
  assert sum(x.size for x in jax.tree.leaves(nn.unbox(boxed))) == num_params(spec)  # MTP included


@pytest.mark.parametrize("name", [pytest.param(n, marks=TOTAL_MARKS.get(n, ())) for n in sorted(RECIPES)])
def test_total_matches_the_published_size(name):
  total = num_params(model_spec(_recipe(name)), mtp=False)  # published totals leave MTP out (DeepSeek-V3: 671B + MTP)
  assert abs(total / RECIPES[name][0] - 1) <= 0.005, total


@pytest.mark.parametrize("name", [pytest.param(n, marks=v[3]) for n, v in sorted(RECIPES.items())])
def test_active_matches_the_published_size(name):
  active = num_params(model_spec(_recipe(name)), active=True, mtp=False)
  assert abs(active / RECIPES[name][1] - 1) <= 0.01, active


def test_layout_is_valid_and_model_state_fits_an_h200(recipe):
  """The layout passes every check on its GPU count, and fp32 params + grads + Adam, sharded as
  the logical-axis rules shard them, take at most 70% of an H200 (the rest for activations,
  with full recompute)."""
  name, cfg, _, boxed = recipe
  devices = RECIPES[name][2]
  assert devices % 8 == 0
  validate(cfg, devices)
  p = cfg.parallel
  size = {"heads": p.tp, "kv_heads": p.tp, "mlp": p.tp, "vocab": p.tp, "expert": p.ep,
          "expert_mlp": p.etp if p.etp is not None else p.tp}
  per_device = 0
  for leaf, axes in zip(jax.tree.leaves(nn.unbox(boxed)), jax.tree.leaves(nn.get_partition_spec(boxed))):
    shards = 1
    for axis in axes:
      shards *= size.get(axis, 1)
    per_device += leaf.size / shards
  assert per_device * BYTES_PER_PARAM <= 0.7 * H200_BYTES, f"{per_device / 1e9:.2f}B parameters per GPU"
