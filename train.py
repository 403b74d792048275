"""moejax training entry point.

  python train.py --config configs/tiny_moe.py --workdir /tmp/run [--config.moe.num_experts=8 ...]
  python train.py --config.checkpoint.load_params=DIR --workdir /tmp/run   (DIR's own config: configs/converted.py)

Several processes (hosts): under `srun` nothing more is needed; otherwise start one per host with
--coordinator_address=HOST:PORT --num_processes=N --process_id=I (or the JAX_* environment).
"""
import ast
import os
import sys
import tempfile

from absl import app, flags, logging
from ml_collections import config_flags

from moejax.config import ConfigError, RunError, apply_overrides, check_override_keys, split_none_overrides

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory: metrics, TensorBoard, checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "Multi-process: HOST:PORT of process 0 "
                                   "(default: JAX_COORDINATOR_ADDRESS, or SLURM's first node under srun).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Multi-process: number of processes "
                                      "(default: JAX_NUM_PROCESSES, or SLURM_NTASKS).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "Multi-process: this process's id "
                                   "(default: JAX_PROCESS_ID, or SLURM_PROCID).")
flags.mark_flags_as_required(["config", "workdir"])
_NONE_KEYS: list[str] = []  # --config.a.b=None flags (split_none_overrides), set once the recipe is loaded


def check_recipe(argv: list[str]) -> None:
  """One-line errors for a --config file that is missing or defines no get_config()."""
  path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if path is None and "--config" in argv[:-1]:
    path = argv[argv.index("--config") + 1]
  if path is None:
    return  # absl reports the missing required flag
  path = path.split(":", 1)[0]  # config_flags takes FILE:ARGS
  if not os.path.isfile(path):
    raise SystemExit(f"--config {path}: no such file; the recipes are in configs/ (e.g. configs/tiny_moe.py)")
  tree = ast.parse(open(path).read(), path)
  names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
  names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
  if "get_config" not in names:
    raise SystemExit(f"--config {path} defines no get_config(): add one that returns the config "
                     "(see configs/tiny_moe.py)")


def config_from_checkpoint(argv: list[str]) -> list[str]:
  """Without --config, `--config.checkpoint.load_params=DIR` of a converted checkpoint brings its
  own config: argv gets `--config=configs/converted.py:DIR` (checked for DIR/moejax_config.json)."""
  if any(a == "--config" or a.startswith("--config=") for a in argv):
    return argv
  load = [a.split("=", 1)[1] for a in argv if a.startswith("--config.checkpoint.load_params=")]
  if not load:
    return argv
  if not os.path.isfile(os.path.join(load[-1], "moejax_config.json")):
    raise SystemExit(f"--config.checkpoint.load_params={load[-1]} has no moejax_config.json (not written by "
                     "`python -m moejax.convert`): pass --config RECIPE too")
  recipe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "converted.py")
  return [f"--config={recipe}:{load[-1]}", *argv]


def check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.TemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise SystemExit(f"--workdir {workdir} is not writable ({e.strerror}): pass a directory you can write to")


def main(argv):
  if len(argv) > 1:  # absl would otherwise drop them silently
    hint = f"--config.{argv[1]}" if "=" in argv[1] else "--config.SECTION.KEY=VALUE"
    raise SystemExit(f"train.py takes no positional arguments (got {' '.join(argv[1:])!r}): "
                     f"a setting is a flag, e.g. {hint}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it renames at INFO
  check_workdir(_WORKDIR.value)
  from moejax.train import distributed
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  except ValueError as e:
    raise SystemExit(str(e)) from None
  from moejax.train.loop import train
  try:
    cfg = _CONFIG.value
    apply_overrides(cfg, {key: None for key in _NONE_KEYS})
    train(cfg, _WORKDIR.value)
  except (ConfigError, RunError) as e:
    raise SystemExit(str(e)) from None


if __name__ == "__main__":
  try:
    check_override_keys(sys.argv[1:])
    sys.argv[1:], _NONE_KEYS[:] = split_none_overrides(sys.argv[1:])
  except ConfigError as e:
    raise SystemExit(str(e)) from None
  sys.argv[1:] = config_from_checkpoint(sys.argv[1:])
  check_recipe(sys.argv[1:])
  app.run(main)
