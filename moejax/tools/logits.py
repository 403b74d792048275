"""The model's fp32 logits for given token ids, to check a checkpoint against another framework.

  python -m moejax.tools.logits [--config RECIPE] --params DIR --tokens 3,1,4,1,5 --out logits.npy

DIR: a converted checkpoint (DIR/params), a training workdir (its newest checkpoint that verifies)
or one of its checkpoints/STEP, saved with either layout of the layers (`model.scan_layers`).
Writes [len(tokens), V] float32, V the real vocabulary (the padded rows cut off). Without
--config, DIR's own config (moejax_config.json, written by `python -m moejax.convert`) is used.
The model runs in float32 on one device whatever the recipe's compute dtype.
"""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np


def logits(cfg, params_dir: str, tokens: list[int]) -> np.ndarray:
  """[len(tokens), vocab_size] fp32 logits of the weights in `params_dir` (as `load_weights` takes
  them: converted, a training workdir or one of its steps) under `cfg`."""
  from flax import linen as nn

  from moejax.config import ConfigError, model_spec
  from moejax.models.gpt import GPTModel
  from moejax.moe.state import MOE_STATE
  from moejax.train.start import load_as_run

  cfg = cfg.copy_and_resolve_references()
  cfg.model.dtype, cfg.model.params_dtype = "float32", "float32"
  spec = model_spec(cfg)
  bad = [t for t in tokens if not 0 <= t < spec.vocab_size]
  if bad:
    raise ConfigError([f"--tokens: id {bad[0]} is outside the vocabulary [0, {spec.vocab_size})"])
  model = GPTModel(spec)
  tokens_1S = jnp.asarray([tokens], jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), tokens_1S)
  device = jax.sharding.make_single_device_sharding(jax.devices()[0])
  wanted = {"params": nn.unbox(abstract["params"]), MOE_STATE: abstract.get(MOE_STATE, {})}
  variables = load_as_run(params_dir, spec, wanted, jax.tree.map(lambda _: device, wanted), flag="--params")
  if variables[MOE_STATE] is None:  # weights without router state: the init's (zero expert biases)
    variables[MOE_STATE] = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), wanted[MOE_STATE])
  logits_1SV, _ = jax.jit(model.apply)(variables, tokens_1S)
  return np.asarray(logits_1SV[0, :, :spec.vocab_size], np.float32)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m moejax.tools.logits", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="recipe file (default: DIR/moejax_config.json)")
  parser.add_argument("--params", required=True, help="weights: a converted checkpoint (DIR with params/), a training "
                      "workdir (its newest checkpoint) or one of its checkpoints/STEP")
  parser.add_argument("--tokens", required=True, help="comma-separated token ids")
  parser.add_argument("--out", required=True, help="output .npy file")
  args = parser.parse_args(argv)

  from moejax.config import ConfigError, RunError
  from moejax.config.recipes import load_recipe
  from moejax.convert import ConversionError, load_checkpoint_config
  try:
    tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
  except ValueError:
    raise SystemExit(f"error: --tokens {args.tokens!r} must be comma-separated integers") from None
  if not tokens:
    raise SystemExit("error: --tokens is empty: give at least one token id")
  try:
    cfg = load_recipe(args.config) if args.config else load_checkpoint_config(args.params)
    out = logits(cfg, args.params, tokens)
  except (ConfigError, ConversionError, RunError) as e:
    raise SystemExit(f"error: {e}") from None
  np.save(args.out, out)
  print(f"wrote {args.out}: float32 {list(out.shape)}", file=sys.stderr)


if __name__ == "__main__":
  main(sys.argv[1:])
