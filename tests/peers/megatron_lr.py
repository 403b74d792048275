"""Run inside the megatron-core peer venv: the learning rate and weight decay megatron-core's
OptimizerParamScheduler gives each parameter at given steps, its param groups made by megatron-core's
own _get_param_groups (decoupled_lr group of the embedding and output layer, no decay on 1-D params).
Usage: python megatron_lr.py CASES.json OUT.json (called by tests/train/test_optim.py).
Each case is {"args": the scheduler's keyword arguments, "optimizer": OptimizerConfig's lr, min_lr,
decoupled_lr, decoupled_min_lr, "params": [[name, ndim, is_embedding_or_output_parameter], ...],
"steps": [...]}; OUT holds per case {name: [[lr, weight_decay] per step]}.
"""
import json
import sys
import tempfile

import torch
from megatron.core.optimizer import OptimizerConfig, _get_param_groups
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


class _Optimizer:  # what the scheduler reads and writes: the param groups
  def __init__(self, param_groups):
    self.param_groups = param_groups


def schedule(case):
  model = torch.nn.Module()
  names = {}
  for i, (name, ndim, embedding_or_output) in enumerate(case["params"]):
    p = torch.nn.Parameter(torch.zeros((2,) * ndim))
    p.is_embedding_or_output_parameter = embedding_or_output
    model.register_parameter(f"p{i}", p)
    names[id(p)] = name
  groups = _get_param_groups([model], OptimizerConfig(**case["optimizer"]), None)
  sched = OptimizerParamScheduler(_Optimizer(groups), **case["args"])
  out = {name: [] for name in names.values()}
  for n in case["steps"]:
    sched.num_steps = n
    sched.step(0)  # sets each group's lr and weight_decay
    for g in groups:
      for p in g["params"]:
        out[names[id(p)]].append([g["lr"], g["weight_decay"]])
  return out


if __name__ == "__main__":
  torch.distributed.init_process_group("gloo", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1)
  cases = json.load(open(sys.argv[1]))
  json.dump([schedule(c) for c in cases], open(sys.argv[2], "w"))
  torch.distributed.destroy_process_group()
