"""weighted_swiglu (custom VJP, fp32 inside) against autodiff of the plain formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.moe.experts import swiglu_interleaved, weighted_swiglu


def _reference(h_R2F, probs_R):
  h, p = h_R2F.astype(jnp.float32), probs_R.astype(jnp.float32)
  return swiglu_interleaved(h) * p[:, None]


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_weighted_swiglu_matches_autodiff(dtype, tol):
  rng = np.random.default_rng(0)
  R, F = 37, 24
  h = jnp.asarray(rng.normal(size=(R, 2 * F)) * 3, dtype)
  p = jnp.asarray(rng.random(R), dtype)
  g = jnp.asarray(rng.normal(size=(R, F)), jnp.float32)
  out, vjp = jax.vjp(weighted_swiglu, h, p)
  want, vjp_ref = jax.vjp(_reference, h, p)
  assert out.dtype == h.dtype
  rel = lambda a, b: float(jnp.linalg.norm(a.astype(jnp.float32) - b) / jnp.linalg.norm(b))  # noqa: E731
  assert rel(out, want) < tol
  dh, dp = vjp(g.astype(h.dtype))
  dh_ref, dp_ref = vjp_ref(g)
  assert dh.dtype == h.dtype and dp.dtype == p.dtype
  assert rel(dh, dh_ref.astype(jnp.float32)) < tol and rel(dp, dp_ref.astype(jnp.float32)) < tol


def test_weighted_swiglu_keeps_only_its_inputs():
  """The backward pass needs h and the probs, nothing of size [rows, F] computed from them."""
  h = jnp.ones((16, 8), jnp.bfloat16)
  p = jnp.ones((16,), jnp.bfloat16)
  _, vjp = jax.vjp(weighted_swiglu, h, p)
  leaves = jax.tree.leaves(vjp)
  assert sorted(x.shape for x in leaves if hasattr(x, "shape")) == [(16,), (16, 8)]
