"""Run inside the megatron-core peer venv: the global batch of each step under megatron-core's
RampupBatchsizeNumMicroBatchesCalculator (`--rampup-batch-size`), stepped as Megatron-LM's training loop
steps it (update from the consumed samples, then consume the step's batch), and the step count
Megatron-LM's `update_train_iters` derives from `--train-samples` with it (its loop, over this calculator).
Usage: python megatron_batches.py CASES.json OUT.json (called by tests/data/test_batch_schedule.py).
Each case: {"rampup": [start, increment, samples], "global_batch_size", "micro_batch_size", "data_parallel_size",
"steps", "train_samples"}; OUT per case: {"sizes": [...], "micro_batches": [...], "consumed": [...], "train_iters"}.
"""
import json
import sys

from megatron.core.num_microbatches_calculator import RampupBatchsizeNumMicroBatchesCalculator


def run(case):
  start, increment, samples = case["rampup"]
  calc = RampupBatchsizeNumMicroBatchesCalculator(
      global_batch_size=case["global_batch_size"], micro_batch_size=case["micro_batch_size"],
      data_parallel_size=case["data_parallel_size"], decrease_batch_size_if_needed=False, rank=1,
      start_global_batch_size=start, batch_size_increment=increment, ramup_samples=samples)
  out = {"sizes": [], "micro_batches": [], "consumed": []}
  consumed = 0
  for _ in range(case["steps"]):
    calc.update(consumed, consistency_check=True)
    out["consumed"].append(consumed)
    out["sizes"].append(calc.get_current_global_batch_size())
    out["micro_batches"].append(calc.get())
    consumed += calc.get_current_global_batch_size()
  iterations = consumed = 0  # Megatron-LM's update_train_iters (core_v0.16.1): ramp, then whole batches
  while consumed <= samples and consumed <= case["train_samples"]:
    calc.update(consumed, consistency_check=False)
    consumed += calc.get_current_global_batch_size()
    iterations += 1
  if case["train_samples"] > consumed:
    iterations += (case["train_samples"] - consumed) // case["global_batch_size"]
  out["train_iters"] = iterations
  return out


if __name__ == "__main__":
  json.dump([run(c) for c in json.load(open(sys.argv[1]))], open(sys.argv[2], "w"))
