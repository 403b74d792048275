"""The per-device state budget against sums written out, the Mixtral 8x7B numbers README quotes,
and the memory report line."""
import pytest

from moejax.config import ModelSpec, MoESpec, RouterSpec, base_config, model_spec
from moejax.config.recipes import load_recipe
from moejax.metrics.flops import num_params
from moejax.metrics.memory import fmt_bytes, routed_expert_params, state_budget

SPEC = ModelSpec(num_layers=2, hidden_size=32, ffn_hidden_size=64, dtype="bfloat16",
                 moe=MoESpec(num_experts=8, ffn_hidden_size=16, layer_freq=(0, 1), router=RouterSpec(router_topk=2)))


def test_budget_written_out():
  experts = 8 * 3 * 32 * 16  # one MoE layer
  assert routed_expert_params(SPEC) == experts
  dense = num_params(SPEC) - experts
  whole = state_budget(SPEC, ep=4, dp=8, edp=2)
  local = dense + experts / 4
  assert (whole.master_params, whole.optimizer, whole.gradients, whole.compute_copy) == (
      4 * local, 8 * local, 4 * local, 2 * local)  # the bf16 copy the train state keeps
  zero1 = state_budget(SPEC, ep=4, dp=8, edp=2, distributed_optimizer=True)
  shard = dense / 8 + experts / 4 / 2
  assert zero1.master_params == pytest.approx(4 * shard) and zero1.optimizer == pytest.approx(8 * shard)
  assert zero1.compute_copy == pytest.approx(2 * local)  # cast on the shards, gathered whole: no kept copy
  assert zero1.gradients == pytest.approx(2 * local + 4 * shard)
  # edp=1: the experts stay whole, so only the dense part changes
  ep8 = state_budget(SPEC, ep=8, dp=8, edp=1, distributed_optimizer=True)
  assert ep8.optimizer == pytest.approx(8 * (dense / 8 + experts / 8))


def _mixtral():
  import pathlib
  return model_spec(load_recipe(str(pathlib.Path(__file__).resolve().parents[2] / "configs" / "mixtral_8x7b.py")))


def test_mixtral_8x7b_on_8_gpus_as_in_readme():
  """README's table: EP=8 on 8 GPUs (dp=8, edp=1)."""
  spec = _mixtral()
  gb = lambda b: round(b.total / 1e9)  # noqa: E731
  assert num_params(spec) / 1e9 == pytest.approx(46.7, abs=0.05)
  assert gb(state_budget(spec, ep=8, dp=8, edp=1)) == 130
  assert gb(state_budget(spec, ep=8, dp=8, edp=1, distributed_optimizer=True)) == 111
  assert gb(state_budget(spec, ep=8, dp=8, edp=1, distributed_optimizer=True, moment_bytes=4)) == 88


def test_fmt_bytes():
  assert fmt_bytes(1.5e9) == "1.5 GB" and fmt_bytes(2048) == "2.05 kB" and fmt_bytes(12) == "12 B"
