"""moejax training entry point.

  python train.py --config configs/tiny_moe.py --workdir /tmp/run [--config.moe.num_experts=8 ...]
"""
from absl import app, flags, logging
from ml_collections import config_flags

from moejax.config import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file with get_config().", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory: metrics, TensorBoard, checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it renames at INFO
  from moejax.train.loop import train
  try:
    train(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    raise SystemExit(str(e)) from None


if __name__ == "__main__":
  import sys
  from moejax.config import check_override_keys
  try:
    check_override_keys(sys.argv[1:])
  except ConfigError as e:
    raise SystemExit(str(e)) from None
  app.run(main)
