"""Context-parallel attention against plain attention of the whole sequence (8 emulated devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import base_config
from moejax.parallel.context import (context_parallel_attention, from_load_balanced, load_balanced_order,
                                     to_load_balanced)


def test_load_balanced_order_gives_rank_r_chunks_r_and_2cp_minus_1_minus_r():
  order = load_balanced_order(16, 4).reshape(4, 2, 2)  # [rank, its two chunks, chunk positions]
  for r in range(4):
    assert order[r, 0].tolist() == [2 * r, 2 * r + 1] and order[r, 1].tolist() == [2 * (7 - r), 2 * (7 - r) + 1]
  x = jnp.arange(32).reshape(2, 16)
  np.testing.assert_array_equal(from_load_balanced(to_load_balanced(x, 4), 4), x)


def _reference(q, k, v, seg):
  """Causal per-document softmax attention in NumPy (GQA: query head n reads kv head n // G)."""
  B, S, N, D = q.shape
  G = N // k.shape[2]
  s = np.einsum("bqnd,bsnd->bnqs", q, np.repeat(k, G, axis=2)) / np.sqrt(D)
  mask = np.tril(np.ones((S, S), bool))[None] & (seg[:, :, None] == seg[:, None, :])
  s = np.where(mask[:, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnqs,bsnd->bqnd", p, np.repeat(v, G, axis=2))


@pytest.mark.parametrize("comm", ["p2p", "allgather"])
def test_context_parallel_attention_matches_full_attention(mesh_and_rules, comm):
  """cp=4 × dp=2, GQA (4 query heads over 2 kv heads), documents, a value head dim unlike the
  query's (MLA's shapes); the sequence enters and leaves in the load-balanced order."""
  c = base_config()
  c.parallel.cp = 4
  c.train.seq_length = 32
  layout, rules = mesh_and_rules(c)
  rng = np.random.default_rng(0)
  B, S = 4, 32
  q, k = rng.normal(size=(B, S, 4, 8)).astype(np.float32), rng.normal(size=(B, S, 2, 8)).astype(np.float32)
  v = rng.normal(size=(B, S, 2, 6)).astype(np.float32)
  seg = np.cumsum(rng.random((B, S)) < 0.15, axis=1).astype(np.int32)
  want = _reference(q, k, v, seg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    f = jax.jit(lambda *a: from_load_balanced(context_parallel_attention(
        *(to_load_balanced(jnp.asarray(x), 4) for x in a), comm=comm), 4))
    got = f(q, k, v, seg)
    grads = jax.jit(jax.grad(lambda q: jnp.sum(f(q, k, v, seg) ** 2)))(q)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  ref_grad = jax.grad(lambda q: jnp.sum(jnp.asarray(_reference_jnp(q, k, v, seg)) ** 2))(jnp.asarray(q))
  np.testing.assert_allclose(grads, ref_grad, rtol=1e-4, atol=1e-5)


def _reference_jnp(q, k, v, seg):
  """The same reference through jax.nn.dot_product_attention (value head dim padded to q's)."""
  D, Dv = q.shape[-1], v.shape[-1]
  mask = jnp.asarray(seg)[:, None, :, None] == jnp.asarray(seg)[:, None, None, :]
  vp = jnp.pad(jnp.asarray(v), ((0, 0), (0, 0), (0, 0), (0, D - Dv)))
  return jax.nn.dot_product_attention(q, jnp.asarray(k), vp, mask=mask, is_causal=True)[..., :Dv]
