"""Pictures of MoE load from the per-layer token counts a run logs (`logging.moe_per_layer=True`
puts `moe_tokens_per_expert` [layers, experts] in every metrics.jsonl row): a layer × expert
heatmap of token share, and TensorBoard histograms/images of the same during training."""
from __future__ import annotations

import numpy as np


def token_share(counts_LE) -> np.ndarray:
  """Each layer's tokens per expert as a share of that layer's routed tokens."""
  counts_LE = np.asarray(counts_LE, np.float64)
  return counts_LE / np.maximum(counts_LE.sum(-1, keepdims=True), 1e-9)


def heatmap_figure(counts_LE, title: str):
  """A matplotlib figure: layers down, experts across, colour = share of the layer's tokens
  (an even split is 1/E; the colour scale is centred there)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  share = token_share(counts_LE)
  L, E = share.shape
  fig, ax = plt.subplots(figsize=(min(2 + 0.35 * E, 14), 1.2 + 0.35 * L))
  im = ax.imshow(share, cmap="RdBu_r", vmin=0, vmax=2 / E, aspect="auto", interpolation="nearest")
  ax.set_xlabel("expert")
  ax.set_ylabel("MoE layer")
  ax.set_title(title)
  fig.colorbar(im, ax=ax, label=f"token share (even = 1/{E})")
  fig.tight_layout()
  return fig


def log_to_tensorboard(tb, step: int, counts_LE, image: bool) -> None:
  """Per layer, a histogram over expert ids weighted by routed tokens; with `image`, the heatmap."""
  counts_LE = np.asarray(counts_LE, np.float64)
  E = counts_LE.shape[-1]
  ids = np.arange(E, dtype=np.float64)
  for i, c in enumerate(counts_LE):
    n = c.sum()
    tb.add_histogram_raw(f"moe/layer_{i}/tokens_per_expert", min=0.0, max=float(E - 1), num=int(n),
                         sum=float((ids * c).sum()), sum_squares=float((ids ** 2 * c).sum()),
                         bucket_limits=(ids + 0.5).tolist(), bucket_counts=c.tolist(), global_step=step)
  if image:
    tb.add_figure("moe/token_share", heatmap_figure(counts_LE, f"step {step}"), global_step=step)
