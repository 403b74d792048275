"""python -m moejax.convert hf-to-moejax --family F --hf HF_DIR --out DIR [--no-scan-layers]
   python -m moejax.convert moejax-to-hf --params DIR --out HF_DIR [--family F] [--config RECIPE] [--dtype D]"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python -m moejax.convert", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True)
  from moejax.convert.families import FAMILIES
  to = sub.add_parser("hf-to-moejax", help="HF safetensors checkpoint -> moejax Orbax checkpoint")
  to.add_argument("--family", required=True, choices=sorted(FAMILIES))
  to.add_argument("--hf", required=True, help="directory with config.json and model.safetensors[.index.json]")
  to.add_argument("--out", required=True, help="output directory: params/, moejax_config.json, ...")
  to.add_argument("--no-scan-layers", dest="scan_layers", action="store_false",
                  help="each decoder layer's params on their own (for model.scan_layers=False runs)")
  back = sub.add_parser("moejax-to-hf", help="moejax Orbax checkpoint -> HF safetensors checkpoint")
  back.add_argument("--params", required=True, help="a weights-only checkpoint directory (DIR/params)")
  back.add_argument("--out", required=True, help="output directory for config.json and safetensors shards")
  back.add_argument("--family", choices=sorted(FAMILIES), help="default: the model_type of DIR/hf_config.json")
  back.add_argument("--config", help="a recipe file (default: DIR/moejax_config.json)")
  back.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default: as stored")
  back.add_argument("--max-shard-gb", type=float, default=5.0)
  args = parser.parse_args(argv)

  from moejax.config import ConfigError
  from moejax.convert.convert import hf_to_moejax, moejax_to_hf
  from moejax.convert.hf_io import ConversionError
  try:
    if args.command == "hf-to-moejax":
      hf_to_moejax(args.family, args.hf, args.out, scan_layers=args.scan_layers)
    else:
      cfg = None
      if args.config:
        from moejax.config.recipes import load_recipe
        cfg = load_recipe(args.config)
      moejax_to_hf(args.params, args.out, args.family, cfg, args.dtype, int(args.max_shard_gb * 2**30))
  except (ConversionError, ConfigError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  main(sys.argv[1:])
