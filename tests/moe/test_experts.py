"""weighted_swiglu (moejax/moe/experts.py): value and custom VJP against autodiff of the plain formula."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from moejax.moe.experts import weighted_swiglu


def _reference(h_R2F, probs_R):
  """silu(gate) * up * prob with gate/up interleaved on the last axis, written out plainly."""
  gate, up = h_R2F[:, 0::2], h_R2F[:, 1::2]
  return gate * jax.nn.sigmoid(gate) * up * probs_R[:, None]


def _inputs(dtype, rows=24, ffn=40, seed=0):
  kh, kp, kg = jax.random.split(jax.random.key(seed), 3)
  h = (2.0 * jax.random.normal(kh, (rows, 2 * ffn), jnp.float32)).astype(dtype)
  probs = jax.random.uniform(kp, (rows,), jnp.float32).at[3].set(0.0)  # a row with prob 0 (an empty row)
  g = jax.random.normal(kg, (rows, ffn), jnp.float32).astype(dtype)
  return h, probs, g


def test_value_and_vjp_equal_autodiff_of_the_formula_in_fp32():
  h, probs, g = _inputs(jnp.float32)
  out, vjp = jax.vjp(weighted_swiglu, h, probs)
  ref, ref_vjp = jax.vjp(_reference, h, probs)
  np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-6)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_vjp_matches_finite_differences():
  h, probs, _ = _inputs(jnp.float32, rows=6, ffn=5, seed=1)
  check_grads(weighted_swiglu, (h, probs), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_bf16_rounds_once_and_keeps_dtypes():
  h, probs, g = _inputs(jnp.bfloat16, seed=2)
  out, vjp = jax.vjp(weighted_swiglu, h, probs)
  dh, dprobs = vjp(g)
  assert (out.dtype, dh.dtype, dprobs.dtype) == (jnp.bfloat16, jnp.bfloat16, jnp.float32)
  h32, g32 = h.astype(jnp.float32), g.astype(jnp.float32)
  ref, ref_vjp = jax.vjp(_reference, h32, probs)
  ref_dh, ref_dprobs = ref_vjp(g32)
  np.testing.assert_array_equal(out, ref.astype(jnp.bfloat16))  # fp32 inside, one rounding
  np.testing.assert_allclose(dh.astype(jnp.float32), ref_dh, rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(dprobs, ref_dprobs, rtol=1e-4, atol=1e-4)
