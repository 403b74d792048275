"""Precision-aware AdamW against Adam written out in NumPy: moments stored in bf16 (rounded once per
step), every update computed in fp32; the moments take half the bytes. The learning-rate schedules
against megatron-core's OptimizerParamScheduler (peer subprocess, tests/peers/megatron_lr.py)."""
import json
import pathlib
import re
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from moejax.config import ConfigError, base_config
from moejax.train.optim import lr_schedule, make_optimizer
from moejax.train.validate import validate

REPO = pathlib.Path(__file__).resolve().parents[2]
PEER = REPO / ".peer-venv/bin/python"


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


SCHEDULES = [  # (optim keys, train.train_iters)
    (dict(lr_decay_style="constant", lr_warmup_iters=3), 12),
    (dict(lr_decay_style="linear", lr_warmup_iters=3), 12),  # Megatron's default
    (dict(lr_decay_style="linear", lr_warmup_iters=0, lr_decay_iters=8), 12),
    (dict(lr_decay_style="cosine", lr_warmup_iters=3, lr_warmup_init=0.25), 12),
    (dict(lr_decay_style="cosine", lr_warmup_iters=0), 12),
    (dict(lr_decay_style="inverse-square-root", lr_warmup_iters=4), 30),
    (dict(lr_decay_style="inverse-square-root", lr_warmup_iters=0, min_lr=0.3), 30),
    (dict(lr_decay_style="cosine", lr_warmup_fraction=0.25, lr_decay_iters=10), 12),  # warmup 2.5 steps
] + [(dict(lr_decay_style="WSD", lr_warmup_iters=2, lr_decay_iters=14, lr_wsd_decay_iters=5, lr_wsd_decay_style=s), 16)
     for s in ("exponential", "linear", "cosine", "minus_sqrt")]


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_lr_schedules_match_megatron(tmp_path):
  """Every step from 0 (the first update's) to past the decay, lr 1.0 and min_lr 0.1 unless set.
  Megatron counts the scheduler's steps in samples (iterations x global batch, 4 here), as its
  training loop does: only the inverse square root's clamps to 1 tell the two units apart."""
  cases, ours = [], []
  for optim, iters in SCHEDULES:
    c = base_config()
    c.optim.update(lr=1.0, min_lr=0.1)
    c.optim.update(**optim)
    c.train.update(train_iters=iters, global_batch_size=4)
    o, steps, gbs = c.optim, list(range(iters + 3)), 4
    decay = (o.lr_decay_iters or iters) * gbs
    warmup = o.lr_warmup_iters * gbs if o.lr_warmup_fraction is None else o.lr_warmup_fraction * decay
    cases.append({"steps": [n * gbs for n in steps], "args": dict(
        init_lr=o.lr_warmup_init, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=warmup, lr_decay_steps=decay,
        lr_decay_style=o.lr_decay_style, wsd_decay_steps=o.lr_wsd_decay_iters and o.lr_wsd_decay_iters * gbs,
        lr_wsd_decay_style=o.lr_wsd_decay_style)})
    sched = jax.jit(lr_schedule(c))
    ours.append([float(sched(n)) for n in steps])
  (tmp_path / "cases.json").write_text(json.dumps(cases))
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_lr.py"), str(tmp_path / "cases.json"),
                      str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  for (optim, _), got, want in zip(SCHEDULES, ours, json.load(open(tmp_path / "out.json"))):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=str(optim))


@pytest.mark.parametrize("optim,message", [
    (dict(lr_decay_style="WSD"), "optim.lr_decay_style='WSD' needs optim.lr_wsd_decay_iters >= 1"),
    (dict(lr_warmup_fraction=0.1, lr_warmup_iters=5), "optim.lr_warmup_fraction=0.1 must be in [0, 1) with "
                                                     "optim.lr_warmup_iters=0"),
    (dict(lr_warmup_fraction=1.0), "optim.lr_warmup_fraction=1.0 must be in [0, 1)"),
])
def test_schedule_settings_that_do_not_go_together(optim, message):
  c = base_config()
  c.optim.update(**optim)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(c)
