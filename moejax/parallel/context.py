"""Context parallelism: the sequence split over the `cp` mesh axes in 2·cp load-balanced chunks.

Causal attention work grows along the sequence, so (as Megatron does) the sequence is cut into
2·cp chunks and cp rank r holds chunks r and 2·cp−1−r: every rank then has the same share of
the causal score matrix. Under cp > 1 the model keeps every [B, S] tensor in this
*load-balanced order* (`GPTModel` reorders its inputs once, `to_load_balanced`), so the plain
block sharding of the sequence axis over cp gives each rank its two chunks; everything but
attention is per token and does not care about the order. Attention masks by original token
index (`load_balanced_order`) and document id, never by array position.

`context_parallel_attention(q, k, v, segments)` runs inside one `jax.shard_map`; keys and values
reach every rank either by one all-gather (`allgather`) or around a ring of collective
permutes (`p2p`, Megatron's default): at each of the cp steps a rank attends to the block it
holds while the next block is already on its way, merging blocks with an online softmax.
It takes separate q/k and v head dims (MLA) and fewer kv heads than q heads (GQA).

Legend: B sequences, S positions (s local), N query heads, K kv heads, G = N/K, D q/k head dim,
Dv value head dim.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from moejax.parallel.sharding import current_mesh, logical_axis_size, mesh_axes_of

NEG = -1e30  # masked score: finite, so fully masked blocks stay NaN-free


def cp_axes() -> tuple[str, ...]:
  """Mesh axes that split the sequence inside attention (logical axis `attn_seq`); () off-mesh."""
  return mesh_axes_of("attn_seq")


def cp_size() -> int:
  return logical_axis_size("attn_seq")


def load_balanced_order(seq_len: int, cp: int) -> np.ndarray:
  """Original token index at each position of the load-balanced order: rank r's shard is
  chunks r and 2·cp−1−r of 2·cp equal chunks."""
  chunks = np.arange(seq_len).reshape(2 * cp, seq_len // (2 * cp))
  return np.concatenate([np.concatenate([chunks[r], chunks[2 * cp - 1 - r]]) for r in range(cp)])


def to_load_balanced(x, cp: int, axis: int = 1):
  """Reorders the sequence axis into the load-balanced order (identity for cp = 1)."""
  return x if cp == 1 else jnp.take(x, load_balanced_order(x.shape[axis], cp), axis=axis)


def from_load_balanced(x, cp: int, axis: int = 1):
  """Undoes `to_load_balanced`."""
  return x if cp == 1 else jnp.take(x, np.argsort(load_balanced_order(x.shape[axis], cp)), axis=axis)


def _scores(q_BsKGD, k_BsKD, scale):
  return jnp.einsum("bqkgd,bskd->bkgqs", q_BsKGD, k_BsKD, preferred_element_type=jnp.float32) * scale


def _mask(q_idx_q, k_idx_s, q_seg_Bq, k_seg_Bs):
  """[B|1, 1, 1, q, s]: causal by original index, and the same document when segments are given."""
  m = (q_idx_q[:, None] >= k_idx_s[None, :])[None, None, None]
  if q_seg_Bq is not None:
    m = m & (q_seg_Bq[:, :, None] == k_seg_Bs[:, None, :])[:, None, None]
  return m


def _attend_all(q, k, v, q_idx, k_idx, q_seg, k_seg, scale):
  """Masked softmax attention of local queries over all gathered keys, in fp32."""
  s = jnp.where(_mask(q_idx, k_idx, q_seg, k_seg), _scores(q, k, scale), NEG)
  p = jax.nn.softmax(s, axis=-1)
  return jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def _attend_ring(q, k, v, q_idx, k_idx, q_seg, k_seg, scale, axes, cp):
  """Blockwise attention over the ring: cp steps, each attending to the held block while
  sending it on; blocks merged with a running max and normalizer (online softmax)."""
  B, s, K, G, _ = q.shape
  perm = [(j, (j + 1) % cp) for j in range(cp)]

  def step(carry, _):
    (k, v, k_idx, k_seg), m, l, acc = carry
    nxt = jax.lax.ppermute((k, v, k_idx, k_seg), axes, perm)  # independent of the math below
    mask = _mask(q_idx, k_idx, q_seg, k_seg)
    sc = jnp.where(mask, _scores(q, k, scale), NEG)
    m_new = jnp.maximum(m, sc.max(-1))
    p = jnp.where(mask, jnp.exp(sc - m_new[..., None]), 0.0)
    corr = jnp.exp(m - m_new)
    l = l * corr + p.sum(-1)
    pv = jnp.einsum("bkgqs,bskd->bkgqd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return (nxt, m_new, l, acc * corr[..., None] + pv), None

  m0 = jnp.full((B, K, G, s), NEG, jnp.float32)
  acc0 = jnp.zeros((B, K, G, s, v.shape[-1]), jnp.float32)
  (_, _, l, acc), _ = jax.lax.scan(step, ((k, v, k_idx, k_seg), m0, jnp.zeros_like(m0), acc0), None, length=cp)
  return jnp.moveaxis(acc / l[..., None], 3, 1)  # [B, s, K, G, Dv]


def context_parallel_attention(q_BSND, k_BSKD, v_BSKV, segments_BS=None, comm: str = "p2p",
                               scale: float | None = None):
  """Causal (and, with segments, per-document) attention of a load-balanced sequence split
  over the cp axes; returns [B, S, N, Dv] in the inputs' order and dtype."""
  mesh = current_mesh()
  axes = cp_axes()
  cp = cp_size()
  B, S, N, D = q_BSND.shape
  scale = 1.0 / math.sqrt(D) if scale is None else scale
  batch = mesh_axes_of("batch")
  if B % math.prod(mesh.shape[a] for a in batch):
    batch = ()  # e.g. model.init on fewer sequences than data-parallel ranks
  heads, kv_heads = mesh_axes_of("heads"), mesh_axes_of("kv_heads")
  idx_S = jnp.asarray(load_balanced_order(S, cp), jnp.int32)
  seg_BS = jnp.zeros((B, S), jnp.int32) if segments_BS is None else segments_BS.astype(jnp.int32)
  with_segments = segments_BS is not None

  def body(q, k, v, idx, seg):
    b, s, n, _ = q.shape
    q = q.reshape(b, s, k.shape[2], n // k.shape[2], D)
    q_seg = seg if with_segments else None
    if comm == "allgather":
      gather = lambda x, ax: jax.lax.all_gather(x, axes, axis=ax, tiled=True)  # noqa: E731
      o = _attend_all(q, gather(k, 1), gather(v, 1), idx, gather(idx, 0), q_seg,
                      gather(seg, 1) if with_segments else None, scale)
    else:
      o = _attend_ring(q, k, v, idx, idx, q_seg, seg if with_segments else None, scale, axes, cp)
    return o.reshape(b, s, n, -1).astype(v.dtype)

  tok = lambda *rest: P(batch or None, axes, *rest)  # noqa: E731
  specs = (tok(heads or None, None), tok(kv_heads or None, None), tok(kv_heads or None, None), P(axes),
           tok())
  return jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=tok(heads or None, None), check_vma=False)(
      q_BSND, k_BSKD, v_BSKV, idx_S, seg_BS)
