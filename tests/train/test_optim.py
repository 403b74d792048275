"""Precision-aware AdamW against Adam written out in NumPy: moments stored in bf16 (rounded once per
step), every update computed in fp32; the moments take half the bytes."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from moejax.config import base_config
from moejax.train.optim import make_optimizer


def _cfg(**optim):
  c = base_config()
  c.optim.update(lr=1e-2, min_lr=1e-2, lr_decay_style="constant", weight_decay=0.1, clip_grad=0.0,
                 adam_beta1=0.9, adam_beta2=0.95, adam_eps=1e-8, **optim)
  return c


def _numpy_adamw(p, grads, lr, b1, b2, eps, wd, mu_dtype, nu_dtype):
  """Adam with decoupled decay in fp32 (as a fused kernel computes it: the stored moments read and
  upcast, the new ones used for the update, then stored rounded to their dtype)."""
  m = np.zeros_like(p, dtype=mu_dtype)
  v = np.zeros_like(p, dtype=nu_dtype)
  for t, g in enumerate(grads, 1):
    m32 = b1 * m.astype(np.float32) + (1 - b1) * g
    v32 = b2 * v.astype(np.float32) + (1 - b2) * g * g
    p = p - lr * ((m32 / (1 - b1 ** t)) / (np.sqrt(v32 / (1 - b2 ** t)) + eps) + wd * p)
    m, v = m32.astype(mu_dtype), v32.astype(nu_dtype)
  return p, m, v


@pytest.mark.parametrize("exp_avg,exp_avg_sq", [("bf16", "bf16"), ("fp32", "bf16"), ("bf16", "fp32")])
def test_precision_aware_adam_matches_numpy(exp_avg, exp_avg_sq):
  cfg = _cfg(use_precision_aware_optimizer=True, exp_avg_dtype=exp_avg, exp_avg_sq_dtype=exp_avg_sq)
  opt = make_optimizer(cfg)
  rng = np.random.default_rng(0)
  p0 = rng.normal(size=(64, 32)).astype(np.float32)
  grads = [rng.normal(scale=10.0 ** -s, size=p0.shape).astype(np.float32) for s in (1, 2, 3)]
  params = {"w": jnp.asarray(p0)}
  state = opt.init(params)
  dtypes = {"fp32": np.float32, "bf16": ml_dtypes.bfloat16}
  update = jax.jit(opt.update)
  for g in grads:
    updates, state = update({"w": jnp.asarray(g)}, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
  adam = state[1][0]
  assert adam.mu["w"].dtype == jnp.dtype(dtypes[exp_avg]) and adam.nu["w"].dtype == jnp.dtype(dtypes[exp_avg_sq])
  p, m, v = _numpy_adamw(p0, grads, 1e-2, 0.9, 0.95, 1e-8, 0.1, dtypes[exp_avg], dtypes[exp_avg_sq])
  ulp = {"fp32": 1e-6, "bf16": 2.0 ** -7}  # a rounding step may land one bf16 ulp apart
  np.testing.assert_allclose(np.asarray(adam.mu["w"], np.float32), m.astype(np.float32), rtol=ulp[exp_avg], atol=1e-9)
  np.testing.assert_allclose(np.asarray(adam.nu["w"], np.float32), v.astype(np.float32), rtol=ulp[exp_avg_sq], atol=1e-9)
  np.testing.assert_allclose(params["w"], p, rtol=1e-6, atol=1e-6)


def test_bf16_moments_take_half_the_bytes():
  params = {"w": jnp.zeros((128, 64))}
  nbytes = lambda state: sum(x.nbytes for x in jax.tree.leaves(state))  # noqa: E731
  full = nbytes(make_optimizer(_cfg()).init(params))
  low = nbytes(make_optimizer(_cfg(use_precision_aware_optimizer=True, exp_avg_dtype="bf16",
                                   exp_avg_sq_dtype="bf16")).init(params))
  assert low < full and full - low == 2 * 128 * 64 * 2
