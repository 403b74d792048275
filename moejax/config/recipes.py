"""Loading a recipe file (configs/NAME.py with `get_config()`) outside the train.py CLI."""
from __future__ import annotations

import importlib.util
import os

from moejax.config.spec import ConfigError


def load_recipe(path: str):
  """`get_config()` of the recipe at `path`; ConfigError naming the file when it has none."""
  if not os.path.isfile(path):
    raise ConfigError([f"--config {path}: no such file; the recipes are in configs/ (e.g. configs/tiny_moe.py)"])
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError([f"--config {path} defines no get_config(): add one that returns the config"])
  return module.get_config()
