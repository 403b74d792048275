"""Row movement (moejax/moe/permute.py): exact inverses and gather-only gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moejax.moe.experts import grouped_mlp
from moejax.moe.permute import permute, unpermute


def _float_scatters(jaxpr_text: str) -> list[str]:
  """Lines of a printed jaxpr that scatter floating-point values."""
  lines = [ln.strip() for ln in jaxpr_text.splitlines()]
  return [ln for ln in lines if "scatter" in ln and "=" in ln and ln.split("=")[0].count(":f")]


def _random_routing(key, T, K, E):
  k1, k2 = jax.random.split(key)
  idx_TK = jnp.argsort(jax.random.uniform(k1, (T, E)), axis=1)[:, :K].astype(jnp.int32)
  probs_TK = jax.nn.softmax(jax.random.normal(k2, (T, K)), -1)
  return probs_TK, idx_TK


@pytest.mark.parametrize("num_local,offset", [(8, 0), (3, 2)])
def test_permute_then_unpermute_restores_input_and_gradient(num_local, offset):
  """Megatron's check: permute → scale rows by probs 1/K → unpermute gives back x (and its gradient)
  when every expert is local; with a subset of experts only their rows come back."""
  T, K, H, E = 13, 2, 5, 8
  x_TH = jax.random.normal(jax.random.key(0), (T, H))
  _, idx_TK = _random_routing(jax.random.key(1), T, K, E)
  probs_TK = jnp.full((T, K), 1.0 / K)
  local_TK = (idx_TK >= offset) & (idx_TK < offset + num_local)

  def roundtrip(x):
    x_RH, probs_R, group_sizes, place = permute(x, probs_TK, idx_TK, num_local, offset)
    assert int(group_sizes.sum()) == int(local_TK.sum())
    return unpermute(x_RH * probs_R[:, None], place)

  expected = x_TH * (local_TK.sum(1, keepdims=True) / K)
  np.testing.assert_allclose(roundtrip(x_TH), expected, rtol=1e-6, atol=1e-6)
  cot = jax.random.normal(jax.random.key(2), x_TH.shape)
  g = jax.grad(lambda x: jnp.sum(roundtrip(x) * cot))(x_TH)
  np.testing.assert_allclose(g, cot * (local_TK.sum(1, keepdims=True) / K), rtol=1e-6, atol=1e-6)


def test_permute_with_a_row_bound_keeps_every_kept_pair():
  """num_rows (E_l × capacity under dropping) shrinks the buffer; with ≤ num_rows kept pairs
  the round trip is unchanged."""
  T, K, H, E = 12, 2, 4, 4
  x_TH = jax.random.normal(jax.random.key(8), (T, H))
  probs_TK, idx_TK = _random_routing(jax.random.key(9), T, K, E)
  keep_TK = jnp.arange(T * K).reshape(T, K) % 3 == 0       # 8 kept pairs
  full = permute(x_TH, probs_TK, idx_TK, E, 0, keep_TK)
  small = permute(x_TH, probs_TK, idx_TK, E, 0, keep_TK, num_rows=8)
  assert full[0].shape == (T * K, H) and small[0].shape == (8, H)
  np.testing.assert_array_equal(small[0], full[0][:8])
  np.testing.assert_array_equal(small[2], full[2])
  back = lambda r: unpermute(r[0] * r[1][:, None], r[3])
  np.testing.assert_allclose(back(small), back(full), rtol=1e-6, atol=1e-6)


def test_rows_are_sorted_by_expert_and_empty_rows_are_zero():
  T, K, H, E = 9, 2, 4, 6
  x_TH = jax.random.normal(jax.random.key(3), (T, H))
  probs_TK, idx_TK = _random_routing(jax.random.key(4), T, K, E)
  x_RH, probs_R, group_sizes, place = permute(x_TH, probs_TK, idx_TK, 3, 3)
  n = int(group_sizes.sum())
  experts = np.repeat(np.arange(3) + 3, np.asarray(group_sizes))
  rows = np.asarray(place.src_R[:n])
  for r, (t, e) in enumerate(zip(rows, experts)):
    k = list(np.asarray(idx_TK[t])).index(e)
    np.testing.assert_array_equal(x_RH[r], x_TH[t])
    assert probs_R[r] == probs_TK[t, k]
  assert np.all(np.asarray(x_RH[n:]) == 0) and np.all(np.asarray(probs_R[n:]) == 0)


def test_gradients_of_permute_and_unpermute_are_gathers_not_scatter_adds():
  T, K, H, E = 16, 2, 8, 4
  probs_TK, idx_TK = _random_routing(jax.random.key(5), T, K, E)
  w1 = jax.random.normal(jax.random.key(6), (E, H, 2 * H)) * 0.3
  w2 = jax.random.normal(jax.random.key(7), (E, H, H)) * 0.3

  def layer(x, w1, w2):
    x_RH, probs_R, gs, place = permute(x, probs_TK, idx_TK, E, 0)
    return jnp.sum(unpermute(grouped_mlp(x_RH, gs, probs_R, w1, w2, impl="xla"), place))

  text = str(jax.make_jaxpr(jax.grad(layer, argnums=(0, 1, 2)))(jnp.ones((T, H)), w1, w2))
  assert "gather[" in text
  assert "scatter" in text  # the integer bincount / inverse permutation
  assert _float_scatters(text) == []
