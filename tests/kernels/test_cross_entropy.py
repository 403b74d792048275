"""The cross-entropy softmax kernel (Pallas Triton, interpret mode on CPU) against plain JAX."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.kernels.cross_entropy import softmax_xent_rows


def _reference(logits, labels, weights, num_valid):
  x = jnp.where(jnp.arange(logits.shape[1]) < num_valid, logits.astype(jnp.float32), -jnp.inf)
  lse = jax.nn.logsumexp(x, axis=-1)
  target = jnp.take_along_axis(x, labels[:, None], axis=-1)[:, 0]
  d = (jnp.exp(x - lse[:, None]) - jax.nn.one_hot(labels, x.shape[1])) * weights[:, None]
  return lse, target, d.astype(logits.dtype)


# (columns, valid columns): blocks of 256 with a tail that overlaps the last whole block; padding
# columns inside the tail; one block exactly; more padding than a block (two tail blocks); a
# 4096-column block and a short tail.
@pytest.mark.parametrize("v,num_valid", [(300, 290), (64, 64), (300, 100), (5000, 4999)])
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_matches_reference(v, num_valid, dtype):
  rows = 4
  rng = np.random.default_rng(v + num_valid)
  logits = jnp.asarray(3 * rng.normal(size=(rows, v)), dtype)
  labels = jnp.asarray(rng.integers(0, num_valid, rows).astype(np.int32))
  labels = labels.at[0].set(num_valid - 1)  # the last valid column, in the tail when there is one
  weights = jnp.asarray([1.0, 0.0, 0.5, 2.0], jnp.float32)  # a padding row (weight 0) among them
  got = softmax_xent_rows(logits, labels, weights, num_valid, interpret=True)
  want = _reference(logits, labels, weights, num_valid)
  for g, w in zip(got, want):
    assert g.shape == w.shape and g.dtype == w.dtype
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(got[2][:, num_valid:], np.float32))  # padding columns: d = 0
