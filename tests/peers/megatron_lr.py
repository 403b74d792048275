"""Run inside the megatron-core peer venv: megatron-core's learning rate (OptimizerParamScheduler.get_lr)
at given steps. Usage: python megatron_lr.py CASES.json OUT.json (called by tests/train/test_optim.py).
Each case is {"args": the scheduler's keyword arguments, "steps": [...]}; OUT holds a list of lrs per case.
"""
import json
import sys

from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler


class _Optimizer:  # the scheduler sets each group's lr and weight decay; one empty group
  param_groups = [{}]


def lrs(case):
  sched = OptimizerParamScheduler(_Optimizer(), start_wd=0.0, end_wd=0.0, wd_incr_steps=1, wd_incr_style="constant",
                                  **case["args"])
  out = []
  for n in case["steps"]:
    sched.num_steps = n
    out.append(sched.get_lr({}))
  return out


if __name__ == "__main__":
  cases = json.load(open(sys.argv[1]))
  json.dump([lrs(c) for c in cases], open(sys.argv[2], "w"))
