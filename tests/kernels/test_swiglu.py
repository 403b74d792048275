"""The weighted SwiGLU backward kernel (Pallas Triton, interpret mode on CPU) against autodiff of
the plain formula, and against moejax.moe.experts' XLA backward."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.kernels.swiglu import weighted_swiglu_bwd_rows
from moejax.moe.experts import _weighted_swiglu_bwd_xla


def _formula(h_R2F, probs_R):
  h = h_R2F.astype(jnp.float32).reshape(h_R2F.shape[0], -1, 2)
  return jax.nn.silu(h[..., 0]) * h[..., 1] * probs_R[:, None]


@pytest.mark.parametrize("f", [16, 24, 48])  # one whole block; a last block overlapping the one before
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_matches_autodiff_and_xla(f, dtype, tol):
  rng = np.random.default_rng(f)
  rows = 5
  h = jnp.asarray(2 * rng.normal(size=(rows, 2 * f)), dtype)
  g = jnp.asarray(rng.normal(size=(rows, f)), dtype)
  probs = jnp.asarray(rng.random(rows), jnp.float32).at[1].set(0.0)
  dh, dprobs = weighted_swiglu_bwd_rows(h, g, probs, interpret=True)
  assert dh.shape == h.shape and dh.dtype == h.dtype and dprobs.shape == (rows,)
  _, vjp = jax.vjp(_formula, h.astype(jnp.float32), probs)
  want_dh, want_dp = vjp(g.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(dh, np.float32), want_dh, rtol=tol, atol=tol)
  np.testing.assert_allclose(dprobs, want_dp, rtol=1e-5, atol=1e-5)
  xla_dh, xla_dp = _weighted_swiglu_bwd_xla((h, probs), g)  # the same fp32 math, rounded once
  np.testing.assert_allclose(np.asarray(dh, np.float32), np.asarray(xla_dh, np.float32), rtol=tol, atol=tol)
  np.testing.assert_allclose(dprobs, xla_dp, rtol=1e-6, atol=1e-6)


def test_traces_inside_shard_map():
  """Inside a shard_map with check_vma (the MoE layer's), the kernel's outputs are typed as varying
  over the mesh axes as h does: traced for the GPU (the interpreter cannot run under check_vma)."""
  mesh = jax.make_mesh((1,), ("ep",))
  spec = jax.sharding.PartitionSpec("ep")
  sharding = jax.sharding.NamedSharding(mesh, spec)
  args = (jax.ShapeDtypeStruct((4, 32), jnp.bfloat16, sharding=sharding),
          jax.ShapeDtypeStruct((4, 16), jnp.bfloat16, sharding=sharding),
          jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding))
  run = jax.shard_map(weighted_swiglu_bwd_rows, mesh=mesh, in_specs=(spec, spec, spec), out_specs=(spec, spec))
  dh, dprobs = jax.eval_shape(run, *args)
  assert (dh.shape, dh.dtype, dprobs.shape, dprobs.dtype) == ((4, 32), jnp.bfloat16, (4,), jnp.float32)
