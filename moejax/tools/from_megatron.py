"""A moejax recipe from a Megatron-LM run:
`python -m moejax.tools.from_megatron [--out configs/NAME.py] -- <Megatron arguments>`,
`python -m moejax.tools.from_megatron SCRIPT.sh [--set NAME=VALUE ...] [--out ...]` or
`python -m moejax.tools.from_megatron NAME.yaml --set TP=1 --set EP=8 ... [--out ...] [-- extra arguments]`.

The arguments (or those a launch script passes to `pretrain_gpt.py`, read by moejax/tools/shell_script.py,
or a Megatron-MoE-ModelZoo config's, read by moejax/tools/megatron_yaml.py) go through the flag table of
moejax/tools/megatron_flags.py. The recipe is `get_config()` returning `base_config()` with Megatron's
defaults where moejax's differ and then the run's values; its docstring and the command's output list every
argument that set no key, with the reason. The recipe is checked (`moejax.train.validate`, without devices)
before it is written; its problems are printed."""
from __future__ import annotations

import argparse
import os
import re
import sys

import yaml

from moejax.config import ConfigError, base_config
from moejax.tools.megatron_flags import Conversion, convert
from moejax.tools.megatron_yaml import yaml_arguments
from moejax.tools.shell_script import read_launch
from moejax.train.validate import validate


def apply(values: dict):
  """base_config() with the converted values (a wrong value raises ConfigError naming its key)."""
  cfg = base_config()
  for key, value in values.items():
    section, name = key.split(".")
    try:
      cfg[section][name] = value
    except (TypeError, KeyError) as e:
      raise ConfigError([f"{key}={value!r}: {e}"]) from e
  return cfg


def recipe_text(conv: Conversion, source: str, title: str) -> str:
  """The recipe file: docstring with the unmapped arguments, then get_config()."""
  notes = "\n".join(f"  {given}: {why}" for given, why in conv.notes) or "  (none)"
  sections: dict[str, list[str]] = {}
  for key, value in conv.values.items():
    section, name = key.split(".")
    sections.setdefault(section, []).append(f"{name}={_literal(value)}")
  body = []
  for section, items in sections.items():
    lines, line = [], f"  c.{section}.update("
    for item in items:
      if len(line) + len(item) + 2 > 110 and not line.endswith("("):
        lines.append(line.rstrip() + ",")
        line = " " * (len(f"  c.{section}.update("))
      elif not line.endswith("("):
        line += ", "
      line += item
    lines.append(line + ")")
    body.extend(lines)
  return (f'"""{title}\n\nConverted by `python -m moejax.tools.from_megatron` from\n{source}:\nMegatron\'s defaults '
          f"where moejax's differ, then the run's values. Arguments that set no key (and why):\n{notes}\n"
          '"""\nfrom moejax.config import base_config\n\n\ndef get_config():\n  c = base_config()\n'
          + "\n".join(body) + "\n  return c\n")


def _literal(value) -> str:
  """Python source of a value; a 0/1 layer pattern as Megatron writes it ([0] * 3 + [1] * 58)."""
  if isinstance(value, tuple) and value and all(v in (0, 1) and isinstance(v, int) for v in value):
    runs = []
    for v in value:
      if runs and runs[-1][0] == v:
        runs[-1][1] += 1
      else:
        runs.append([v, 1])
    return " + ".join(f"[{v}] * {n}" for v, n in runs)
  return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _placeholder(v) -> bool:
  return isinstance(v, str) and ("$" in v or "your_own" in v)


def _placeholders(conv: Conversion) -> None:
  """Values still holding a shell variable or a script placeholder get a note; a data path that is
  one leaves the recipe on synthetic tokens until it is set."""
  for key, value in list(conv.values.items()):
    if not any(_placeholder(v) for v in (value if isinstance(value, tuple) else (value,))):
      continue
    if key == "data.path":
      conv.values.pop(key)
      conv.values["data.source"] = "synthetic"
      conv.notes.append((f"--data-path {' '.join(value)}", "a placeholder of the script: the recipe trains on "
                         "synthetic tokens until data.source='indexed' and data.path are set"))
      if conv.values.get("train.eval_interval"):
        conv.notes.append((f"--eval-interval {conv.values['train.eval_interval']}", "evaluation reads the "
                           "validation split of data.path: train.eval_interval=0 until data.path is set"))
        conv.values["train.eval_interval"] = 0
    else:
      conv.notes.append((f"{key}={value!r}", f"a placeholder of the script: set {key} in the recipe (or its "
                                             "variable with --set NAME=VALUE)"))


def run(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m moejax.tools.from_megatron", description=__doc__.split("\n\n")[0])
  ap.add_argument("--out", help="recipe file to write (default: print it)")
  ap.add_argument("--title", help="first docstring line (default: from the source)")
  ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                  help="a variable of the script or config, as if exported before it runs (TP=2): a script's "
                       "${NAME:-default}, a ModelZoo config's ${NAME}; repeat for several")
  ap.add_argument("source", nargs="*", help="a launch script or ModelZoo config (then any extra arguments, as its "
                                            "sbatch script appends them), or (after --) Megatron's arguments")
  argv = sys.argv[1:] if argv is None else list(argv)
  cut = argv.index("--") if "--" in argv else len(argv)  # Megatron's arguments after --, as they are
  args = ap.parse_args(argv[:cut])
  args.source += argv[cut + 1:]
  if not args.source or not (args.source[0].startswith("-") or os.path.isfile(args.source[0])):
    what = f"{args.source[0]}: no such launch script" if args.source else "nothing to convert"
    ap.error(f"{what}; give a script (SCRIPT.sh), a Megatron-MoE-ModelZoo config (NAME.yaml) or Megatron's "
             "arguments after -- (-- --num-layers 32 ...)")
  bad = [kv for kv in args.set if not re.fullmatch(r"\w+=.*", kv)]
  if bad:
    ap.error(f"--set {bad[0]}: give NAME=VALUE (--set TP=2)")
  variables = dict(kv.split("=", 1) for kv in args.set)
  if os.path.isfile(args.source[0]):
    source, extra = args.source[0], args.source[1:]
    try:
      if source.endswith((".yaml", ".yml")):
        argv_m, assumed = yaml_arguments(open(source).read(), variables), []
      else:
        launch = read_launch(open(source).read(), variables)
        argv_m, assumed = launch.arguments, [(f"(script) {cmd}", why) for cmd, why in launch.assumptions]
    except (ValueError, yaml.YAMLError) as e:
      print(f"{source}: {e}", file=sys.stderr)
      return 2
    argv_m = argv_m + extra
  else:
    source, argv_m, assumed = "a Megatron argument list", list(args.source), []
  conv = convert(argv_m)
  conv.notes.extend(assumed)
  _placeholders(conv)
  try:
    cfg = apply(conv.values)
  except ConfigError as e:
    print(e, file=sys.stderr)
    return 2
  title = args.title or f"Recipe converted from {os.path.basename(source)}."
  text = recipe_text(conv, source, title)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
    print(f"wrote {args.out}", file=sys.stderr)
  else:
    print(text)
  for given, why in conv.notes:
    print(f"not mapped: {given}: {why}", file=sys.stderr)
  try:
    validate(cfg)
  except ConfigError as e:
    print(f"the recipe does not validate yet:\n{e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(run())
