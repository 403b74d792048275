"""The model regrouped by pipeline stage: where each decoder layer's parameters and MoE state live
on the pp ranks, and the forward pass of one virtual stage.

Checkpoints keep the decoder's own tree (segments of scanned superblocks with a leading `layers`
axis, moejax/models/decoder.py), so they do not depend on pp. A pipelined step regroups it per
layer kind (dense or MoE block): `stage_tree` gathers arrays [pp, n, ...] whose row q on rank r
is the q-th layer of that kind the rank holds (in virtual-stage, then layer order; missing rows
padded), and `unstage_tree` brings gradients and MoE state back by the inverse gather.

In the lockstep SPMD pipeline every rank runs the same program, so a virtual stage's forward
(`StagePlan.forward`) runs `max_layers` layer slots on every rank: a slot runs each layer kind that
any rank holds there and keeps the one this rank holds (an empty slot passes x through). The
embedding and the head run everywhere too and count only where the stage holds E or L.

Legend: B sequences of the micro-batch, S positions, H hidden, M MoE layers of the model,
E experts.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from moejax.config import ModelSpec
from moejax.layers.dropout import step_rngs
from moejax.layers.embedding import Embedding, OutputHead
from moejax.layers.norms import RMSNorm
from moejax.models.decoder import DecoderBlock, layer_segments
from moejax.moe.router import LOG_NAMES, aux_loss_coeffs
from moejax.moe.state import MOE_STATE
from moejax.parallel.pipeline import PipelineLayout


@dataclasses.dataclass(frozen=True, eq=False)
class StagePlan:
  """Static tables of where the layers of `spec` go under `layout`.

  kinds[k] is a layer kind (is_moe); sources[k] the decoder (segment, block) stacks of that kind in
  row order; gather[k] [pp, n_k] the row each rank keeps at each local index (valid[k] False for
  padding). Per (rank, chunk, slot) [pp, vpp, max_layers]: slot_kind (index into kinds, −1 empty),
  slot_index (row in the rank's stack), slot_layer (global layer id), slot_moe (global MoE layer
  id, −1 for a dense or empty slot). has_embedding/has_loss [pp, vpp].
  """
  spec: ModelSpec
  layout: PipelineLayout
  kinds: tuple[bool, ...]
  sources: tuple[tuple[tuple[str, str, int], ...], ...]
  gather: tuple[np.ndarray, ...]
  valid: tuple[np.ndarray, ...]
  slot_kind: np.ndarray
  slot_index: np.ndarray
  slot_layer: np.ndarray
  slot_moe: np.ndarray
  has_embedding: np.ndarray
  has_loss: np.ndarray
  num_moe_layers: int

  @classmethod
  def build(cls, spec: ModelSpec, layout: PipelineLayout) -> StagePlan:
    pattern = spec.moe_pattern
    where = []  # global layer -> (segment, block, repeat)
    for i, (unit, repeats) in enumerate(layer_segments(pattern)):
      where += [(f"segment_{i}", f"block_{j}", r) for r in range(repeats) for j in range(len(unit))]
    kinds = tuple(sorted(set(pattern)))
    sources, rows = [], []
    for k in kinds:  # rows of kind k: its (segment, block) stacks one after another
      stacks = list(dict.fromkeys((seg, blk) for (seg, blk, _), is_moe in zip(where, pattern) if is_moe == k))
      reps = {sb: sum(1 for w in where if w[:2] == sb) for sb in stacks}
      sources.append(tuple((seg, blk, reps[seg, blk]) for seg, blk in stacks))
      offset = dict(zip(stacks, np.cumsum([0] + [reps[sb] for sb in stacks[:-1]])))
      rows.append({l: int(offset[w[:2]]) + w[2] for l, w in enumerate(where) if pattern[l] == k})
    pp, vpp, n_slots = layout.pp, layout.vpp, max(layout.max_layers, 1)
    moe_id = {l: q for q, l in enumerate(l for l in range(len(pattern)) if pattern[l])}
    tabs = {n: np.full((pp, vpp, n_slots), -1, np.int32) for n in ("kind", "index", "layer", "moe")}
    local = [[[] for _ in kinds] for _ in range(pp)]  # rank -> kind -> rows held
    for r in range(pp):
      for c in range(vpp):
        for j, l in enumerate(layout.decoder_layers(r, c)):
          k = kinds.index(pattern[l])
          tabs["kind"][r, c, j], tabs["index"][r, c, j] = k, len(local[r][k])
          tabs["layer"][r, c, j], tabs["moe"][r, c, j] = l, moe_id.get(l, -1)
          local[r][k].append(rows[k][l])
    gather, valid = [], []
    for k in range(len(kinds)):
      n = max(max(len(local[r][k]) for r in range(pp)), 1)
      gather.append(np.array([local[r][k] + [0] * (n - len(local[r][k])) for r in range(pp)], np.int32))
      valid.append(np.array([[q < len(local[r][k]) for q in range(n)] for r in range(pp)]))
    tabs["index"] = np.maximum(tabs["index"], 0)
    flags = lambda ch: np.array([[ch in layout.stage(r, c) for c in range(vpp)] for r in range(pp)])  # noqa: E731
    return cls(spec, layout, kinds, tuple(sources), tuple(gather), tuple(valid), tabs["kind"], tabs["index"],
               tabs["layer"], tabs["moe"], flags("E"), flags("L"), len(moe_id))

  # ---------------------------------------------------------------- regrouping
  def stage_tree(self, decoder_tree) -> tuple:
    """Per kind, the decoder's stacks of that kind as [pp, n_k, ...] rows (a subtree absent from
    `decoder_tree`, e.g. MoE state of a block without any, gives None)."""
    out = []
    for k, srcs in enumerate(self.sources):
      stacks = [decoder_tree.get(seg, {}).get(blk) for seg, blk, _ in srcs]
      if any(s is None for s in stacks):
        out.append(None)
        continue
      rows = jax.tree.map(lambda *a: jnp.concatenate(a), *stacks)
      g = self.gather[k]
      if np.array_equal(g.ravel(), np.arange(g.size)):  # contiguous blocks: a reshape (no data movement)
        out.append(jax.tree.map(lambda a: a.reshape(g.shape + a.shape[1:]), rows))
      else:
        out.append(jax.tree.map(lambda a: jnp.take(a, g, axis=0), rows))
    return tuple(out)

  def unstage_tree(self, staged: tuple, like) -> dict:
    """The inverse of `stage_tree`: the decoder subtree shaped like `like` (segments only)."""
    out: dict[str, Any] = {}
    for k, srcs in enumerate(self.sources):
      if staged[k] is None:
        continue
      g, ok = self.gather[k], self.valid[k]
      n_rows = sum(reps for _, _, reps in srcs)
      position = np.zeros(n_rows, np.int64)  # row -> its place in the flattened [pp * n_k]
      position[g[ok]] = np.flatnonzero(ok.ravel())
      flat = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), staged[k])
      if np.array_equal(position, np.arange(n_rows)):
        rows = jax.tree.map(lambda a: a[:n_rows], flat)
      else:
        rows = jax.tree.map(lambda a: jnp.take(a, position, axis=0), flat)
      start = 0
      for seg, blk, reps in srcs:
        piece = jax.tree.map(lambda a: a[start:start + reps], rows)
        start += reps
        out.setdefault(seg, {})[blk] = piece
    return jax.tree.map(lambda ref, x: x.astype(ref.dtype), {s: like[s] for s in out}, out)

  # ---------------------------------------------------------------- one virtual stage
  def embed(self, params, tokens_BS, rng=None):
    return Embedding(self.spec).apply({"params": params["embedding"]}, tokens_BS, rngs=step_rngs(rng))

  def head_loss(self, params, x_BSH, labels_BS, weights_BS):
    """Final norm (params["final_norm"]), output head (or the tied embedding) and Σ
    weights·cross-entropy (as GPTModel with labels)."""
    s = self.spec
    x_BSH = RMSNorm(s.norm_epsilon, s.dtype, s.params_dtype).apply({"params": params["final_norm"]}, x_BSH)
    if not s.untie_embeddings_and_output_weights:  # tied: the embedding table is the head
      return Embedding(s).apply({"params": params["embedding"]}, x_BSH, labels_BS, weights_BS, method=Embedding.loss)
    return OutputHead(s).apply({"params": params["output_layer"]}, x_BSH, labels_BS, weights_BS,
                               method=OutputHead.loss)

  def _layer(self, is_moe: bool, params, moe_state, x_BSH, positions_BS, segments_BS, rng):
    variables = {"params": params, **({MOE_STATE: moe_state} if moe_state is not None else {})}
    (y_BSH, stats), updates = DecoderBlock(self.spec, is_moe).apply(
        variables, x_BSH, positions_BS, segments_BS, rngs=step_rngs(rng),
        mutable=[MOE_STATE])
    return y_BSH, stats, updates.get(MOE_STATE, moe_state)

  def zero_stats(self):
    """Per-MoE-layer statistics of a virtual stage, all zero (see `forward`)."""
    M, r = self.num_moe_layers, self.spec.moe.router
    f = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
    names = ("z_loss",) + tuple(LOG_NAMES[k] for k in aux_loss_coeffs(r)) if M else ()
    return dict(aux_loss=f(M), z_loss=f(M), tokens_per_expert=f(M, self.spec.moe.num_experts or 0),
                dropped_fraction=f(M), logs={n: f(M) for n in names})

  def _slot_runs(self):
    """Consecutive slots with the same set of kinds held by some rank: one scan each."""
    runs = []
    for j in range(self.slot_kind.shape[2]):
      present = tuple(sorted({int(k) for k in self.slot_kind[:, :, j].ravel() if k >= 0}))
      if runs and runs[-1][0] == present:
        runs[-1][2] = j + 1
      else:
        runs.append([present, j, j + 1])
    return [tuple(r) for r in runs if r[0]]

  def forward(self, rank, chunk, layer_params: tuple, moe_state: tuple, x_BSH, positions_BS, segments_BS,
              rng=None):
    """The decoder layers of virtual stage (rank, chunk) on x (rank and chunk may be traced).

    layer_params / moe_state: this rank's stacks per kind ([n_k, ...], MoE state None when the
    kind has none). Returns (x, stats, moe_state): stats per global MoE layer [M, ...] (zero for
    the layers elsewhere; `logs` {name: [M]}), moe_state with this micro-batch counted.
    """
    full = self.spec.recompute.recompute_granularity == "full"
    tab = lambda t, j: jnp.asarray(t)[rank, chunk, j]  # noqa: E731

    def slot(present, carry, j):
      x_BSH, stats, moe_state = carry
      kind_here, index, moe_id = tab(self.slot_kind, j), tab(self.slot_index, j), tab(self.slot_moe, j)
      layer_rng = None if rng is None else jax.random.fold_in(rng, tab(self.slot_layer, j))
      take = lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False)  # noqa: E731
      x_in = x_BSH
      for k in present:
        ms = None if moe_state[k] is None else jax.tree.map(take, moe_state[k])
        fn = lambda *a, k=k: self._layer(self.kinds[k], *a)  # noqa: E731
        if full:
          fn = jax.checkpoint(fn, prevent_cse=False)
        y, st, ms_new = fn(jax.tree.map(take, layer_params[k]), ms, x_in, positions_BS, segments_BS, layer_rng)
        mine = kind_here == k
        x_BSH = jnp.where(mine, y, x_BSH)
        if ms is not None:
          put = lambda a, new: jax.lax.dynamic_update_index_in_dim(  # noqa: E731
              a, jnp.where(mine, new, take(a)), index, 0)
          moe_state = moe_state[:k] + (jax.tree.map(put, moe_state[k], ms_new),) + moe_state[k + 1:]
        if st is not None:
          stats = _add_layer_stats(stats, st, jnp.where(mine, moe_id, -1), self.num_moe_layers)
      return (x_BSH, stats, moe_state), None

    carry = (x_BSH, self.zero_stats(), moe_state)
    for present, j0, j1 in self._slot_runs():
      body = functools.partial(slot, present)
      if j1 - j0 == 1:
        carry, _ = body(carry, j0)
      else:
        carry, _ = jax.lax.scan(body, carry, jnp.arange(j0, j1), unroll=self.spec.scan_unroll or j1 - j0)
    return carry


def _add_layer_stats(stats, st, moe_id, num_moe_layers):
  """Adds one MoE layer's statistics at row moe_id (nothing for −1)."""
  hot = jax.nn.one_hot(moe_id, num_moe_layers, dtype=jnp.float32)  # all zero for −1
  add = lambda acc, v: acc + (hot.reshape(hot.shape + (1,) * jnp.ndim(v)) * v.astype(jnp.float32))  # noqa: E731
  logs = {n: add(stats["logs"][n], v) for n, v in st.logs.items()}
  return dict(aux_loss=add(stats["aux_loss"], st.aux_loss), z_loss=add(stats["z_loss"], st.z_loss),
              tokens_per_expert=add(stats["tokens_per_expert"], st.tokens_per_expert_E),
              dropped_fraction=add(stats["dropped_fraction"], st.dropped_fraction), logs=logs)
