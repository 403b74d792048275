"""Megatron-MoE-ModelZoo's model configs (`model_configs/benchmarking/NAME.yaml`): the argument list its
`sbatch_benchmarking.sh` passes to `pretrain_gpt.py` from the config's MODEL_ARGS mapping. As there, `${NAME}`
is filled from the given variables first (envsubst; a variable not given stays as written, so the caller can
say so), then a `true` value is the bare switch and a `false` value leaves the argument out."""
from __future__ import annotations

import re

import yaml


def yaml_arguments(text: str, variables: dict[str, str]) -> list[str]:
  """The arguments of a ModelZoo config's MODEL_ARGS; ValueError naming what is missing."""
  text = re.sub(r"\$\{(\w+)\}", lambda m: variables.get(m.group(1), m.group(0)), text)
  doc = yaml.safe_load(text)
  model_args = doc.get("MODEL_ARGS") if isinstance(doc, dict) else None
  if not isinstance(model_args, dict):
    raise ValueError("no MODEL_ARGS mapping of `--flag: value` (the Megatron-MoE-ModelZoo config format)")
  out = []
  for flag, value in model_args.items():
    if value is False or str(value).lower() == "false":
      continue
    out.append(str(flag))
    if value is not None and value is not True and str(value).lower() != "true":
      out.extend(str(value).split())  # the sbatch script passes them unquoted: `mlp moe` is two values
  return out
