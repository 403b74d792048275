"""The schema machinery: keys come from the specs, specs come from configs, checks run on construction."""
import dataclasses

import pytest

from moejax.config import (ConfigError, DispatchSpec, ModelSpec, MoESpec, RouterSpec, base_config, choices,
                           model_spec, problems, split_none_overrides)


def test_every_spec_field_is_a_config_key_with_its_default():
  cfg = base_config()
  spec = ModelSpec()
  assert cfg.moe.router_topk == spec.moe.router.router_topk == 2
  assert cfg.model.dtype == spec.dtype and cfg.data.eod == spec.documents.eod
  for f in dataclasses.fields(RouterSpec):
    assert f.name in cfg.moe


def test_model_spec_reads_nested_sections_and_freezes_lists():
  cfg = base_config()
  cfg.moe.update(num_experts=8, layer_freq=[0, 1], router_topk=4)
  cfg.model.num_layers = 2
  spec = model_spec(cfg)
  assert spec.moe.layer_freq == (0, 1) and spec.moe_pattern == (False, True)
  assert spec.moe.router.router_topk == 4
  hash(spec)  # usable as a static Flax module attribute


def test_replace_reaches_nested_specs_and_checks_the_result():
  spec = ModelSpec(moe=MoESpec(num_experts=8))
  assert spec.replace(token_dispatcher_type="alltoall").moe.dispatch.token_dispatcher_type == "alltoall"
  assert spec.replace(hidden_size=32, router_topk=3).moe.router.router_topk == 3
  with pytest.raises(TypeError, match="no field named 'nope'"):
    spec.replace(nope=1)
  with pytest.raises(ConfigError, match="moe.router_topk=9 must be between 1 and moe.num_experts=8"):
    spec.replace(router_topk=9)


def test_choices_come_from_literal_types():
  assert choices(DispatchSpec, "token_dispatcher_type") == ("allgather", "alltoall")
  with pytest.raises(ConfigError, match="moe.token_exchange='nvshmem' is not one of"):
    DispatchSpec(token_exchange="nvshmem")
  with pytest.raises(ConfigError, match="moe.router_score_function='relu'"):
    RouterSpec(router_score_function="relu")


def test_problems_reports_every_spec_once():
  cfg = base_config()
  cfg.moe.update(num_experts=8, router_topk=9, token_dispatcher_type="deepep")
  found = problems(cfg)
  assert len(found) == len(set(found)) == 2


def test_none_overrides_split_off_and_later_values_win():
  rest, keys = split_none_overrides(["--config=configs/tiny_moe.py", "--config.moe.expert_capacity_factor=None",
                                     "--config.moe.num_experts=none", "--config.moe.num_experts=4", "--workdir=w"])
  assert rest == ["--config=configs/tiny_moe.py", "--config.moe.num_experts=4", "--workdir=w"]
  assert keys == ["moe.expert_capacity_factor"]
  with pytest.raises(ConfigError, match="train.seq_length cannot be None"):
    split_none_overrides(["--config.train.seq_length=None"])
