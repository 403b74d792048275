"""Data and evaluation settings: the files exist, the split leaves no needed set empty, the run's length
and batch schedule go together."""
from __future__ import annotations

from moejax.data import batch_schedule
from moejax.data.blend import parse_blend
from moejax.data.gpt_dataset import parse_split, split_ranges
from moejax.data.indexed import IndexedDataset, IndexedDatasetError
from moejax.data.loader import used_splits


def problems(cfg, num_devices: int | None = None) -> list[str]:
  d, t = cfg.data, cfg.train
  problems = batch_schedule.problems(cfg, num_devices)
  if problems:
    return problems
  if d.source != "indexed":
    if t.eval_interval:
      problems.append(f"train.eval_interval={t.eval_interval} needs a validation split: set "
                      "data.source='indexed' with data.path, or train.eval_interval=0")
    return problems
  try:
    prefixes, _ = parse_blend(list(d.path))
    weights = parse_split(d.split)
  except ValueError as e:
    return problems + [str(e)]
  if t.eval_interval and weights[1] == 0:
    problems.append(f"train.eval_interval={t.eval_interval} but data.split={d.split!r} gives the "
                    "validation set weight 0: give it a weight (e.g. '969,30,1') or set train.eval_interval=0")
  for prefix in prefixes:
    try:
      split_ranges(len(IndexedDataset(prefix)), d.split, prefix, used_splits(cfg))
    except (IndexedDatasetError, ValueError) as e:
      problems.append(f"data.path entry {prefix!r}: {e}")
  return problems
