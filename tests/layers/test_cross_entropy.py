"""Fused linear cross-entropy against logits + optax cross-entropy (loss and both gradients)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from moejax.layers.cross_entropy import chunk_positions, linear_cross_entropy


def _reference(x, w, labels, weights, num_valid):
  logits = jnp.einsum("bsh,hv->bsv", x.astype(jnp.float32), w.astype(jnp.float32))
  logits = jnp.where(jnp.arange(w.shape[1]) < num_valid, logits, -jnp.inf)
  return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@pytest.mark.parametrize("impl", ["xla", "pallas"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-5), ("bfloat16", 2e-2)])
def test_matches_full_logits(dtype, tol, impl, monkeypatch):
  """impl="pallas" runs the training pass's softmax in the Pallas kernel (interpreted on CPU)."""
  monkeypatch.setattr("moejax.layers.cross_entropy._CHUNK_ELEMENTS", 2 * 4 * 40)  # 4 positions per chunk
  B, S, H, V, valid = 2, 12, 16, 40, 33
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(B, S, H)), dtype)
  w = jnp.asarray(rng.normal(size=(H, V)) * 0.3, dtype)
  labels = jnp.asarray(rng.integers(0, valid, (B, S)))
  weights = jnp.asarray(rng.random((B, S)) < 0.8, jnp.float32) / 7.0
  assert chunk_positions(B, S, V) == 4
  got, (gx, gw) = jax.value_and_grad(linear_cross_entropy, argnums=(0, 1))(x, w, labels, weights, valid, impl)
  want, (wx, ww) = jax.value_and_grad(_reference, argnums=(0, 1))(x, w, labels, weights, valid)
  rel = lambda a, b: float(jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32)))
  assert got.dtype == jnp.float32 and abs(float(got - want)) <= tol * abs(float(want))
  assert gx.dtype == x.dtype and gw.dtype == w.dtype
  assert rel(gx, wx) < tol and rel(gw, ww) < tol
  np.testing.assert_allclose(linear_cross_entropy(x, w, labels, weights, valid), got, rtol=1e-6)  # no-grad path
  # bf16: the gradient matmuls take bf16 operands (no fp32/TF32 GEMMs), accumulating in fp32
  text = jax.jit(jax.grad(linear_cross_entropy, argnums=(0, 1)), static_argnums=(4, 5)).lower(
      x, w, labels, weights, valid, impl).as_text()
  if dtype == "bfloat16":
    assert "dot_general" in text and not any("f32>" in ln and "dot_general" in ln and "bf16" not in ln
                                             for ln in text.splitlines())


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_online_logsumexp(scale):
  """One-pass log-sum-exp (one vocabulary shard) equals jax.nn.logsumexp, with -inf columns
  (vocabulary padding) anywhere, a row with one finite entry, and logits far beyond exp's range."""
  from moejax.layers.cross_entropy import _online_logsumexp
  x = jnp.asarray(np.random.default_rng(1).normal(size=(3, 5, 1000)) * scale, jnp.float32)
  x = x.at[..., 700:].set(-jnp.inf).at[0, 0, :699].set(-jnp.inf).at[1, 2, ::3].set(-jnp.inf)
  np.testing.assert_allclose(_online_logsumexp(x), jax.nn.logsumexp(x, axis=-1), rtol=1e-6, atol=1e-5)


def test_bf16_logits_rounded_as_megatron(monkeypatch):
  """In bf16 the head's logits are rounded to bf16 after fp32 accumulation and the softmax is taken
  in fp32 (Megatron's output layer + cross-entropy): the fused loss and its gradients equal a
  reference built that way to fp32 precision, and differ measurably from unrounded fp32 logits."""
  monkeypatch.setattr("moejax.layers.cross_entropy._CHUNK_ELEMENTS", 2 * 4 * 40)
  B, S, H, V, valid = 2, 12, 64, 40, 37
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(B, S, H)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(H, V)), jnp.bfloat16)
  labels = jnp.asarray(rng.integers(0, valid, (B, S)))
  weights = jnp.ones((B, S), jnp.float32)

  def megatron(x, w, round_to_bf16=True):
    logits = jnp.einsum("bsh,hv->bsv", x, w, preferred_element_type=jnp.float32)
    logits = logits.astype(jnp.bfloat16).astype(jnp.float32) if round_to_bf16 else logits
    logits = jnp.where(jnp.arange(V) < valid, logits, -jnp.inf)
    return jnp.sum(weights * optax.softmax_cross_entropy_with_integer_labels(logits, labels))

  got = linear_cross_entropy(x, w, labels, weights, valid)
  np.testing.assert_allclose(got, megatron(x, w), rtol=2e-6)
  # the GEMM itself writes bf16 logits (an fp32 result cast afterwards costs a pass on GPUs: XLA
  # does not fold the cast into the GEMM, benchmarks/RESULTS.md)
  text = jax.jit(linear_cross_entropy, static_argnums=4).lower(x, w, labels, weights, valid).as_text()
  heads = [ln for ln in text.splitlines() if "dot_general" in ln and f"x{V}x" in ln.split("->")[-1]]
  assert heads and all(ln.rstrip().endswith(f"x{V}xbf16>") for ln in heads), heads
  assert abs(float(got - megatron(x, w, round_to_bf16=False))) > 1e-5 * abs(float(got))
  gx, gw = jax.grad(linear_cross_entropy, argnums=(0, 1))(x, w, labels, weights, valid)
  wx, ww = jax.grad(megatron, argnums=(0, 1))(x, w)
  for a, b in ((gx, wx), (gw, ww)):  # both round d_logits to bf16 for the bf16 GEMMs
    assert float(jnp.linalg.norm((a - b).astype(jnp.float32)) / jnp.linalg.norm(b.astype(jnp.float32))) < 1e-2


def test_kernel_per_shard_matches_xla_under_a_mesh():
  """On a data-parallel mesh the kernel runs on each device's rows (inside a shard_map) and gives
  the XLA path's loss and gradients."""
  from flax import linen as nn
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("dp", "cp"))  # as moejax's meshes
  rules = (("batch", "dp"), ("attn_seq", "cp"), ("embed", None), ("vocab", None))
  B, S, H, V, valid = 8, 12, 16, 40, 33
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(B, S, H)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(H, V)) * 0.3, jnp.float32)
  labels = jnp.asarray(rng.integers(0, valid, (B, S)))
  weights = jnp.asarray(rng.random((B, S)) < 0.8, jnp.float32)

  def run(impl):
    f = jax.jit(jax.value_and_grad(linear_cross_entropy, argnums=(0, 1)), static_argnums=(4, 5))
    return f(x, w, labels, weights, valid, impl), f.lower(x, w, labels, weights, valid, impl).as_text()

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    (got, (gx, gw)), text = run("pallas")
    (want, (wx, ww)), _ = run("xla")
  assert "manual" in text  # sdy.manual_computation: the kernel runs inside a shard_map
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(gx, wx, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(gw, ww, rtol=1e-5, atol=1e-6)
