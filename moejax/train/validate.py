"""Every config check, run once before anything compiles: schema and model values
(moejax.config), the parallel layout (moejax.parallel), the data (moejax.data)."""
from __future__ import annotations

from moejax import config, data, parallel
from moejax.config import ConfigError


def validate(cfg, num_devices: int | None = None) -> None:
  """Raises ConfigError listing every problem, each with the key and the fix."""
  problems = config.unknown_keys(cfg)  # the other checks need every key in place
  if not problems:
    problems = config.problems(cfg) + parallel.problems(cfg, num_devices) + data.problems(cfg, num_devices)
  if problems:
    raise ConfigError(problems)
