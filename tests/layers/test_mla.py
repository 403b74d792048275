"""The attention core MLA uses when value and query/key head dims differ (zero-padding to one head
dim for jax.nn.dot_product_attention), against plain NumPy softmax attention. MLA itself is checked
against HF transformers' DeepSeek-V2/V3 in tests/convert/test_hf_parity.py."""
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.config import ModelSpec
from moejax.layers.attention import attend


@pytest.mark.parametrize("dqk,dv", [(12, 6), (4, 10)])
def test_attend_with_different_value_head_dim(dqk, dv):
  rng = np.random.default_rng(0)
  B, S, N = 2, 7, 3
  q, k = (rng.normal(size=(B, S, N, dqk)).astype(np.float32) for _ in range(2))
  v = rng.normal(size=(B, S, N, dv)).astype(np.float32)
  scale = 0.37
  got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), None, ModelSpec(dtype="float32"), scale)
  scores = np.einsum("bqnd,bknd->bnqk", q, k) * scale
  scores = np.where(np.tril(np.ones((S, S), bool)), scores, -np.inf)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  want = np.einsum("bnqk,bknd->bqnd", w / w.sum(-1, keepdims=True), v)
  assert got.shape == (B, S, N, dv)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
