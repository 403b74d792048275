"""The config of a converted checkpoint (DIR/moejax_config.json, written by `python -m moejax.convert
hf-to-moejax`): its model and moe sections, training defaults, and checkpoint.load_params=DIR.

  python train.py --config configs/converted.py:DIR --workdir RUN
  python train.py --config.checkpoint.load_params=DIR --workdir RUN     (the same: train.py picks this recipe)
"""
from moejax.convert import load_checkpoint_config


def get_config(directory: str):
  c = load_checkpoint_config(directory)
  c.checkpoint.load_params = directory
  return c
