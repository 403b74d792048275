"""Megatron's QK-clip (`--qk-clip`, MuonClip): each attention layer records its heads' largest
attention logit over the step, and after the optimizer step a head whose largest logit passed
`model.qk_clip_threshold` has its query and key weights scaled down so that it would not have:
by eta = threshold / max logit, the queries by eta^alpha and the keys by eta^(1 - alpha)
(grouped-query attention: one eta per key/value group, from its heads' largest; MLA: per head, the
no-position query part by eta^alpha, the rotary query part by eta, the no-position key part by
eta^(1 - alpha); the shared rotary key and the values untouched), as megatron-core 0.16's
`clip_qk` does. Biases are not scaled (Megatron's neither).
"""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from moejax.config import ModelSpec

COLLECTION = "moe_state"  # the model's step state (moejax/moe/state.py: the routers' buffers too)
_QUERY_CHUNK = 256        # query rows (and key columns) of the logits held at once


@flax.struct.dataclass
class MaxAttentionLogits:
  value: jax.Array  # [heads] fp32: this step's largest attention logit per head (0 before the first)

  @classmethod
  def zeros(cls, num_heads: int) -> MaxAttentionLogits:
    return cls(jnp.zeros((num_heads,), jnp.float32))

  def see(self, logits_N) -> MaxAttentionLogits:
    return self.replace(value=jnp.maximum(self.value, logits_N))

  def finish_step(self, rate: float) -> MaxAttentionLogits:
    del rate
    return jax.tree.map(jnp.zeros_like, self)


def max_attention_logits(q_BSND, k_BSKD, segments_BS, scale: float, positions_S=None) -> jax.Array:
  """[N] the largest scale·q·k per head over the batch, the queries and the keys each may see
  (causal, within its document), in fp32 from the operands' values; no gradient. The logits are
  formed a block of queries against a block of keys at a time, in sequence order only for key blocks
  at or before the query block (causal: about half of the [S, S] products, and of the fp32 logits
  written and read). `positions_S` (NumPy): each slot's position where the sequence is stored in
  another order (context parallelism's load-balanced order), which then forms every block pair."""
  q, k = lax.stop_gradient(q_BSND), lax.stop_gradient(k_BSKD)
  B, S, N, D = q.shape
  K = k.shape[2]
  C = min(_QUERY_CHUNK, S)
  n, pad = -(-S // C), -S % C
  q = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, n, C, K, N // K, D)
  k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(B, n, C, K, D)
  seg = None if segments_BS is None else jnp.pad(segments_BS, ((0, 0), (0, pad)), constant_values=-1).reshape(B, n, C)
  pos = np.arange(S) if positions_S is None else np.asarray(positions_S)
  pos_q = jnp.asarray(np.pad(pos, (0, pad), constant_values=-1).reshape(n, C))  # padded queries see no key,
  pos_k = jnp.asarray(np.pad(pos, (0, pad), constant_values=S).reshape(n, C))   # padded keys no query
  pairs = jnp.asarray([(i, j) for i in range(n) for j in range(n if positions_S is not None else i + 1)], jnp.int32)

  def block(ij):
    i, j = ij[0], ij[1]
    s_BKGCC = jnp.einsum("bckgd,bskd->bkgcs", q[:, i], k[:, j], preferred_element_type=jnp.float32) * scale
    see_BCC = (pos_k[j][None, :] <= pos_q[i][:, None])[None]
    if seg is not None:
      see_BCC = see_BCC & (seg[:, i, :, None] == seg[:, j, None, :])
    return jnp.max(jnp.where(see_BCC[:, None, None], s_BKGCC, -jnp.inf), axis=(0, 3, 4))  # [K, G]

  return jnp.max(lax.map(block, pairs), axis=0).reshape(N)


def _clip(w, eta, parts):
  """w [..., in, N, D] with its last axis cut into `parts` ((width, power), ...): each part times
  eta^power per head; eta [..., N] (leading axes: the scan's layers)."""
  pieces, start = [], 0
  for width, power in parts:
    factor = (eta ** power)[..., None, :, None]
    pieces.append(w[..., start:start + width] * factor.astype(w.dtype) if power else w[..., start:start + width])
    start += width
  return jnp.concatenate(pieces, axis=-1)


def clip_attention(attention: dict, logits: MaxAttentionLogits, spec: ModelSpec) -> dict:
  """The attention module's params after QK-clip from its step's largest logits."""
  a = spec.attention
  thr, alpha, m = a.qk_clip_threshold, a.qk_clip_alpha, logits.value
  out = dict(attention)
  # eta = threshold / max only where max > threshold, 1 elsewhere: megatron-core clamps thr/max to <= 1 for
  # every head once any head of the layer clips, which would flip a head whose largest logit is negative
  if a.mla.multi_latent_attention:
    Dn, Dr, Dv = a.mla.qk_head_dim, a.mla.qk_pos_emb_head_dim, a.mla.v_head_dim
    eta = jnp.where(m > thr, thr / m, 1.0)
    q = "q" if a.mla.q_lora_rank is None else "q_up"
    out[q] = _clip(attention[q], eta, ((Dn, alpha), (Dr, 1.0)))
    out["kv_up"] = _clip(attention["kv_up"], eta, ((Dn, 1.0 - alpha), (Dv, 0.0)))
    return out
  N, K, D = a.num_attention_heads, a.num_query_groups, spec.head_dim
  group = jnp.max(m.reshape(*m.shape[:-1], K, N // K), axis=-1)   # [..., K]
  eta_K = jnp.where(group > thr, thr / group, 1.0)
  out["q"] = _clip(attention["q"], jnp.repeat(eta_K, N // K, axis=-1), ((D, alpha),))
  out["k"] = _clip(attention["k"], eta_K, ((D, 1.0 - alpha),))
  return out


def clip_qk(params, step_state, spec: ModelSpec):
  """params with every attention module QK-clipped by the MaxAttentionLogits beside it in
  `step_state` (the same module path)."""
  is_logits = lambda x: isinstance(x, MaxAttentionLogits)  # noqa: E731

  def walk(p, s):
    if not isinstance(s, dict) or not isinstance(p, dict):
      return p
    if is_logits(s.get("max_attention_logits")):
      return clip_attention(p, s["max_attention_logits"], spec)
    return {k: walk(v, s[k]) if k in s else v for k, v in p.items()}

  return walk(params, step_state)


def largest_logit(step_state) -> jax.Array:
  """The step's largest attention logit over every layer and head (Megatron's max_attention_logit)."""
  found = [x.value for x in jax.tree.leaves(step_state, is_leaf=lambda x: isinstance(x, MaxAttentionLogits))
           if isinstance(x, MaxAttentionLogits)]
  return jnp.max(jnp.stack([jnp.max(v) for v in found])) if found else jnp.zeros((), jnp.float32)
