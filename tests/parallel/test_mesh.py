"""Folded mesh: both Megatron views (tp,cp,dp / etp,ep,edp) over one set of devices."""
import jax
import pytest
from flax import linen as nn

from moejax.config import base_config
from moejax.parallel.mesh import ParallelSizes, fold_axes, make_mesh
from moejax.parallel.sharding import logical_axis_rules


def _sizes(tp=1, cp=1, dp=1, etp=1, ep=1, edp=1):
  return ParallelSizes(tp=tp, cp=cp, pp=1, ep=ep, etp=etp, dp=dp, edp=edp)


@pytest.mark.parametrize("sizes,expected", [
    (_sizes(dp=8, edp=8), [("dp_edp", 8)]),
    (_sizes(dp=8, ep=4, edp=2), [("dp_ep", 4), ("dp_edp", 2)]),
    (_sizes(tp=2, dp=4, etp=2, ep=2, edp=2), [("tp_etp", 2), ("dp_ep", 2), ("dp_edp", 2)]),
    (_sizes(tp=2, dp=4, ep=8), [("tp_ep", 2), ("dp_ep", 4)]),
    (_sizes(tp=2, cp=2, dp=2, etp=2, ep=4), [("tp_etp", 2), ("cp_ep", 2), ("dp_ep", 2)]),
])
def test_fold_axes(sizes, expected):
  assert [(a.name, a.size) for a in fold_axes(sizes)] == expected


def test_views_that_do_not_nest_are_rejected():
  with pytest.raises(ValueError, match="cannot fold onto one mesh"):
    fold_axes(_sizes(tp=2, dp=3, etp=3, ep=2))


def test_rules_shard_experts_over_ep_and_batch_over_dp():
  cfg = base_config()
  cfg.moe.num_experts = 8
  cfg.model.vocab_size = 256
  cfg.parallel.update(tp=2, ep=8, etp=1, sequence_parallel=True)
  layout = make_mesh(cfg, jax.devices())
  assert dict(layout.mesh.shape) == {"pp": 1, "dp_ep": 4, "tp_ep": 2}
  rules = logical_axis_rules(layout, sequence_parallel=True)
  spec = nn.logical_to_mesh_axes(("expert", "expert_embed", "expert_mlp"), rules)
  assert tuple(spec) == (("dp_ep", "tp_ep"), None, None)
  assert tuple(nn.logical_to_mesh_axes(("batch", "seq", "embed"), rules)) == ("dp_ep", "tp_ep", None)
  assert tuple(nn.logical_to_mesh_axes(("heads",), rules)) == ("tp_ep",)
