"""MoE load pictures of a run, from its metrics.jsonl:

  python -m moejax.tools.plot_moe_load --workdir W [--steps 1,100,200] [--out DIR]

writes DIR (default W/plots) /moe_load_step{N}.png (layer × expert token share at each chosen step,
default the first, middle and last), moe_imbalance.png (max/mean tokens per expert, per layer, over
steps) and moe_aux_loss.png (each layer's logged balancing losses over steps). The run must log
per-layer statistics: `--config.logging.moe_per_layer=True`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

import numpy as np

from moejax.metrics.moe_load import heatmap_figure


def _rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise SystemExit(f"--workdir {workdir}: no metrics.jsonl there (is it a run's workdir?)")
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  rows = [r for r in rows if "moe_tokens_per_expert" in r]
  if not rows:
    raise SystemExit(f"{path} has no per-layer MoE statistics: train with --config.logging.moe_per_layer=True")
  return rows


def _series(rows, pattern: str) -> dict[str, tuple[list, list]]:
  """{metric key: (steps, values)} for keys matching `pattern` (e.g. moe/layer_(\\d+)/load_imbalance)."""
  out: dict[str, tuple[list, list]] = {}
  for r in rows:
    for k, v in r.items():
      if v is not None and re.fullmatch(pattern, k):
        out.setdefault(k, ([], []))
        out[k][0].append(r["step"])
        out[k][1].append(v)
  return out


def _line_plot(series, title, ylabel, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(7, 3.5))
  for k in sorted(series, key=lambda k: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", k)]):
    ax.plot(*series[k], label=k.replace("moe/", "").split("/")[0] + " " + k.split("/")[-1], lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot(workdir: str, steps: list[int] | None = None, out: str | None = None) -> list[str]:
  """Writes the PNGs; returns their paths."""
  import matplotlib.pyplot as plt
  rows = _rows(workdir)
  out = out or os.path.join(workdir, "plots")
  os.makedirs(out, exist_ok=True)
  by_step = {r["step"]: r for r in rows}
  steps = steps or sorted({rows[0]["step"], rows[len(rows) // 2]["step"], rows[-1]["step"]})
  missing = [s for s in steps if s not in by_step]
  if missing:
    raise SystemExit(f"--steps {missing} not in {workdir}/metrics.jsonl (it has steps "
                     f"{rows[0]['step']}..{rows[-1]['step']})")
  paths = []
  for s in steps:
    fig = heatmap_figure(np.asarray(by_step[s]["moe_tokens_per_expert"]), f"token share per expert, step {s}")
    paths.append(os.path.join(out, f"moe_load_step{s}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  paths.append(os.path.join(out, "moe_imbalance.png"))
  _line_plot(_series(rows, r"moe/layer_\d+/load_imbalance"), "load imbalance per MoE layer",
             "max / mean tokens per expert", paths[-1])
  losses = _series(rows, r"moe/layer_\d+/(?!load_imbalance|dropped_fraction)\w+")
  paths.append(os.path.join(out, "moe_aux_loss.png"))
  _line_plot(losses, "balancing losses per MoE layer (loss / coeff)", "loss / coeff", paths[-1])
  return paths


def _step_list(text: str) -> list[int]:
  """'1,100,200' → [1, 100, 200]; anything else is argparse's one-line usage error."""
  try:
    return [int(s) for s in text.split(",") if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of step numbers") from None


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m moejax.tools.plot_moe_load", description=__doc__.split("\n\n")[0])
  ap.add_argument("--workdir", required=True)
  ap.add_argument("--steps", type=_step_list, default=[], help="comma-separated steps for the heatmaps")
  ap.add_argument("--out", default=None)
  a = ap.parse_args(argv)
  for p in plot(a.workdir, a.steps or None, a.out):
    print(p)


if __name__ == "__main__":
  sys.exit(main())
