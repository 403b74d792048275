"""The row-tile grouped GEMM (impl="tiled", the CPU default) against a NumPy float64 loop over
groups and jax.lax.ragged_dot: values, both gradients, empty groups, tail rows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from moejax.kernels.grouped_gemm import grouped_gemm
from moejax.kernels.grouped_gemm.tiled import rows_per_tile


def _ref(x, w, dy, sizes):
  """float64 y, dx, dw of sum(y * dy) per group; rows past sum(sizes) give 0."""
  x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
  y, dx, dw = np.zeros((x.shape[0], w.shape[2])), np.zeros_like(x), np.zeros_like(w)
  off = 0
  for g, s in enumerate(sizes):
    r = slice(off, off + s)
    y[r], dx[r], dw[g] = x[r] @ w[g], dy[r] @ w[g].T, x[r].T @ dy[r]
    off += s
  return y, dx, dw


@jax.jit
def _y_dx_dw(x, w, dy, gs):
  y, vjp = jax.vjp(lambda a, b: grouped_gemm(a, b, gs, impl="tiled"), x, w)
  return (y, *vjp(dy))


# (m, groups): sizes drawn per case (empty groups, one group holding nearly all, tail rows);
# m off every tile height, tiles of 8 to 128 rows
SHAPES = [(37, [0, 5, 0, 20, 1]), (200, [0, 0, 150, 3, 0, 40]), (512, [300, 0, 10, 190, 12, 0, 0, 0])]


@pytest.mark.parametrize("m,sizes", SHAPES)
def test_values_and_gradients_equal_the_float64_loop(m, sizes):
  rng = np.random.default_rng(m)
  k, n, g = 24, 40, len(sizes)
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((g, k, n)), jnp.float32)
  dy = jnp.asarray(rng.standard_normal((m, n)), jnp.float32)
  gs = jnp.asarray(sizes, jnp.int32)
  got = _y_dx_dw(x, w, dy, gs)
  for name, a, b in zip(("y", "dx", "dw"), got, _ref(x, w, dy, sizes)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-4, err_msg=name)
  np.testing.assert_allclose(np.asarray(got[0]), np.asarray(jax.lax.ragged_dot(x, w, gs)),
                             rtol=1e-6, atol=1e-5)


def test_tail_rows_are_exact_zeros_even_for_nan_inputs():
  """Rows past sum(group_sizes) (a dispatcher's padding) give 0 and take no part in dw."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((64, 16)), jnp.float32).at[50:].set(jnp.nan)
  w = jnp.asarray(rng.standard_normal((3, 16, 8)), jnp.float32)
  dy = jnp.ones((64, 8), jnp.float32)
  y, dx, dw = _y_dx_dw(x, w, dy, jnp.array([20, 0, 30], jnp.int32))
  assert np.all(np.asarray(y[50:]) == 0) and np.isfinite(np.asarray(y[:50])).all()
  assert np.isfinite(np.asarray(dw)).all() and np.all(np.asarray(dw[1]) == 0)
  np.testing.assert_allclose(np.asarray(dw[2]), np.asarray(x[20:50].T @ dy[20:50]), rtol=1e-5)
  assert np.isfinite(np.asarray(dx)).all()


def test_bf16_accumulates_in_fp32_when_asked():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((96, 64)), jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((4, 64, 32)) / 8, jnp.bfloat16)
  gs = jnp.array([30, 30, 0, 36], jnp.int32)
  y = grouped_gemm(x, w, gs, impl="tiled", preferred_element_type=jnp.float32)
  ref = jax.lax.ragged_dot(x, w, gs, preferred_element_type=jnp.float32)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
  assert grouped_gemm(x, w, gs, impl="tiled").dtype == jnp.bfloat16


@pytest.mark.parametrize("m,g", [(1, 1), (37, 5), (512, 8), (4096, 8), (65536, 8), (2048, 128), (100, 300)])
def test_tile_height_bounds_the_work_and_the_gathered_weights(m, g):
  """A power of two in [8, 128], raised above 128 only while ceil(m/b) tiles would exceed 4g: so
  at most ceil(m/b) + g <= 5g tiles, each gathering one weight matrix."""
  b = rows_per_tile(m, g)
  assert b >= 8 and b & (b - 1) == 0
  assert b <= 128 or -(-m // (b // 2)) > 4 * g
  assert -(-m // b) <= 4 * g


def test_weight_gradient_sums_over_the_axes_only_the_rows_vary_over():
  """Inside shard_map, rows split over an axis the weights are replicated on (expert data
  parallelism): each device's weight gradient is the sum over all devices' rows, as ragged_dot's
  autodiff gives. grouped_gemm casts both operands to vary over the same axes before the custom
  VJPs of "tiled" and "pallas" (one line for both; the Pallas interpreter does not run under
  shard_map, so "tiled" shows it here)."""
  rng = np.random.default_rng(9)
  x, w, dy = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((256, 16), (4, 16, 24), (256, 24)))
  sizes = jnp.array([[40, 0, 60, 20], [0, 100, 28, 0]], jnp.int32)  # per device's 128 rows
  mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2])

  def loss(x, w):
    def local(x, w, gs, dy):
      y = grouped_gemm(x, w, gs[0], impl="tiled")
      return jnp.sum(y * dy)[None]
    per_device = jax.shard_map(local, mesh=mesh, in_specs=(P("d"), P(), P("d"), P("d")), out_specs=P("d"))
    return jnp.sum(per_device(x, w, sizes, dy))

  ref = sum(_ref(x[i * 128:(i + 1) * 128], w, dy[i * 128:(i + 1) * 128], sizes[i].tolist())[2] for i in range(2))
  rows, whole = jax.NamedSharding(mesh, P("d")), jax.NamedSharding(mesh, P())
  x, w, dy, sizes = jax.device_put((x, w, dy, sizes), (rows, whole, rows, rows))
  dw = jax.jit(jax.grad(loss, argnums=1))(x, w)
  np.testing.assert_allclose(np.asarray(dw), ref, rtol=1e-5, atol=1e-4)
