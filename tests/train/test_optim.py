"""Precision-aware AdamW against Adam written out in NumPy: moments stored in bf16 (rounded once per
step), every update computed in fp32; the moments take half the bytes. The learning-rate and
weight-decay schedules of each param group against megatron-core's OptimizerParamScheduler (peer
subprocess, tests/peers/megatron_lr.py); the decoupled learning rate's update against optax.adamw;
the optimizer state of existing checkpoints unchanged."""
import json
import pathlib
import re
import subprocess

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.config import ConfigError, base_config, model_spec
from moejax.data.batch_schedule import BatchSchedule
from moejax.models.gpt import GPTModel
from moejax.train.optim import (decay_mask, is_embedding_or_output_parameter, keep_state_dtypes, lr_schedule,
                                make_optimizer, precision_aware, weight_decay_schedule)
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
     for s in ("exponential", "linear", "cosine", "minus_sqrt")] + [
    # weight-decay schedules (over train_iters, whatever the lr's decay)
    (dict(lr_decay_style="linear", lr_warmup_iters=3, weight_decay=0.05), 12),
    (dict(lr_decay_style="cosine", weight_decay_incr_style="linear", start_weight_decay=0.0, end_weight_decay=0.1), 12),
    (dict(lr_decay_style="linear", lr_decay_iters=6, weight_decay_incr_style="cosine", start_weight_decay=0.01,
          end_weight_decay=0.2), 10),
    (dict(lr_decay_style="constant", weight_decay_incr_style="linear", start_weight_decay=0.03,
          end_weight_decay=0.03), 8),
    # the decoupled group of the embedding and output layer: lr's warmup and decay, its own ends
    (dict(lr_decay_style="constant", lr_warmup_iters=3, decoupled_lr=3.0), 12),
    (dict(lr_decay_style="linear", lr_warmup_iters=3, decoupled_lr=3.0, decoupled_min_lr=0.5), 12),
    (dict(lr_decay_style="cosine", lr_warmup_iters=3, lr_warmup_init=0.25, decoupled_lr=0.5), 12),  # min: min_lr
    (dict(lr_decay_style="inverse-square-root", lr_warmup_iters=4, decoupled_lr=2.0, decoupled_min_lr=0.4), 30),
    (dict(lr_decay_style="WSD", lr_warmup_iters=2, lr_decay_iters=14, lr_wsd_decay_iters=5, lr_wsd_decay_style="cosine",
          decoupled_lr=0.2, decoupled_min_lr=0.0, weight_decay_incr_style="cosine", start_weight_decay=0.0,
          end_weight_decay=0.1), 16),
]
# (our path, ndim, Megatron's is_embedding_or_output_parameter): a table of each kind and 1-D biases
PARAMS = [(("embedding", "embedding"), 2, True), (("output_layer", "kernel"), 2, True),
          (("decoder", "kernel"), 2, False), (("decoder", "bias"), 1, False)]


def _ours(c, steps):
  """{name: [[lr, weight decay] per step]} by moejax's schedules and its choice of each leaf's."""
  tree = {a: {} for (a, _), _, _ in PARAMS}
  for (a, b), ndim, _ in PARAMS:
    tree[a][b] = jnp.zeros((2,) * ndim)
  decays, o = decay_mask(tree), c.optim
  main, wd = jax.jit(lr_schedule(c)), jax.jit(weight_decay_schedule(c))
  decoupled = jax.jit(lr_schedule(c, decoupled=True)) if o.decoupled_lr is not None else main
  out = {}
  for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
    lr = decoupled if is_embedding_or_output_parameter(path) else main
    on = decays[path[0].key][path[1].key]
    out[".".join(k.key for k in path)] = [
        [float(lr(n)), on * (o.weight_decay if o.weight_decay_incr_style == "constant" else float(wd(n)))]
        for n in steps]
  return out


def _megatron_case(c, samples, warmup, decay, wsd, wd_steps) -> dict:
  """A case of tests/peers/megatron_lr.py: megatron-core's scheduler at these sample counts, its lengths in
  samples, over the param groups megatron-core makes of PARAMS."""
  o = c.optim
  constant = o.weight_decay_incr_style == "constant"
  return {"steps": samples, "args": dict(
      init_lr=o.lr_warmup_init, max_lr=o.lr, min_lr=o.min_lr, lr_warmup_steps=warmup, lr_decay_steps=decay,
      lr_decay_style=o.lr_decay_style, wsd_decay_steps=wsd, lr_wsd_decay_style=o.lr_wsd_decay_style,
      wd_incr_steps=wd_steps, wd_incr_style=o.weight_decay_incr_style,
      start_wd=o.weight_decay if constant else o.start_weight_decay,
      end_wd=o.weight_decay if constant else o.end_weight_decay),
      "optimizer": dict(lr=o.lr, min_lr=o.min_lr, decoupled_lr=o.decoupled_lr, decoupled_min_lr=o.decoupled_min_lr),
      "params": [[".".join(path), ndim, flag] for path, ndim, flag in PARAMS]}


def _megatron_schedules(tmp_path, cases) -> list:
  (tmp_path / "cases.json").write_text(json.dumps(cases))
  r = subprocess.run([str(PEER), str(REPO / "tests/peers/megatron_lr.py"), str(tmp_path / "cases.json"),
                      str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  return json.load(open(tmp_path / "out.json"))


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_schedules_match_megatron(tmp_path):
  """Each parameter's learning rate and weight decay at every step from 0 (the first update's) to past
  the decay, lr 1.0 and min_lr 0.1 unless set, against megatron-core's scheduler over the param groups
  megatron-core makes (embedding and output layer with their decoupled lr; no decay on biases).
  Megatron counts the scheduler's steps in samples (iterations x global batch, 4 here), as its
  training loop does: only the inverse square root's clamps to 1 tell the two units apart."""
  cases, ours = [], []
  for optim, iters in SCHEDULES:
    c = base_config()
    c.optim.update(lr=1.0, min_lr=0.1)
    c.optim.update(**optim)
    c.train.update(train_iters=iters, global_batch_size=4)
    validate(c)
    o, steps, gbs = c.optim, list(range(iters + 3)), 4
    decay = (o.lr_decay_iters or iters) * gbs
    warmup = o.lr_warmup_iters * gbs if o.lr_warmup_fraction is None else o.lr_warmup_fraction * decay
    cases.append(_megatron_case(c, [n * gbs for n in steps], warmup, decay,
                                o.lr_wsd_decay_iters and o.lr_wsd_decay_iters * gbs, iters * gbs))
    ours.append(_ours(c, steps))
  for (optim, _), got, want in zip(SCHEDULES, ours, _megatron_schedules(tmp_path, cases)):
    assert got.keys() == want.keys()
    for name in got:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=f"{name} {optim}")


RAMPED = [  # (optim keys in samples, train keys): the schedule's position is the samples before each step
    (dict(lr_decay_style="cosine", lr_warmup_samples=40), dict(rampup_batch_size=(4, 4, 60), train_samples=300)),
    (dict(lr_decay_style="linear", lr_warmup_samples=30, lr_decay_samples=250, weight_decay_incr_style="cosine",
          start_weight_decay=0.0, end_weight_decay=0.1), dict(rampup_batch_size=(4, 8, 100), train_samples=301)),
    (dict(lr_decay_style="WSD", lr_warmup_fraction=0.1, lr_wsd_decay_samples=90, lr_wsd_decay_style="linear",
          decoupled_lr=2.0), dict(step_batch_size_schedule="0:4 320:8 1280:12", train_samples=290)),
    (dict(lr_decay_style="inverse-square-root", lr_warmup_samples=33), dict(rampup_batch_size=(4, 4, 50),
                                                                          train_samples=400)),
    (dict(lr_decay_style="cosine", lr_warmup_samples=30), dict(train_samples=301)),  # constant batch, samples
]


@pytest.mark.skipif(not PEER.exists(), reason="megatron-core peer venv missing: run .ci/peer_venv.sh")
def test_schedules_under_a_batch_ramp_match_megatron(tmp_path):
  """Sample-based training, the batch ramped up (train.global_batch_size 12 after it): each parameter's
  learning rate and weight decay at every step against megatron-core's scheduler at the samples
  consumed before the step (BatchSchedule.consumed, itself held to megatron-core's calculator in
  tests/data/test_batch_schedule.py); sample counts that are no whole number of batches included."""
  cases, ours = [], []
  for optim, train in RAMPED:
    c = base_config()
    c.optim.update(lr=1.0, min_lr=0.1, **optim)
    c.train.update(**{"train_iters": None, "global_batch_size": 12, "micro_batch_size": 4, "seq_length": 80, **train})
    validate(c)
    o, t, batches = c.optim, c.train, BatchSchedule.of(c)
    steps = list(range(batches.train_iters + 3))
    decay = o.lr_decay_samples or t.train_samples
    warmup = o.lr_warmup_samples if o.lr_warmup_fraction is None else o.lr_warmup_fraction * decay
    cases.append(_megatron_case(c, [batches.consumed(n) for n in steps], warmup, decay, o.lr_wsd_decay_samples,
                                t.train_samples))
    ours.append(_ours(c, steps))
  for (optim, train), got, want in zip(RAMPED, ours, _megatron_schedules(tmp_path, cases)):
    for name in got:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=f"{name} {optim} {train}")


@pytest.mark.parametrize("optim,message", [
    (dict(lr_decay_style="WSD"), "optim.lr_decay_style='WSD' needs optim.lr_wsd_decay_iters >= 1"),
    (dict(lr_warmup_fraction=0.1, lr_warmup_iters=5), "optim.lr_warmup_fraction=0.1 must be in [0, 1) with "
                                                     "optim.lr_warmup_iters=0"),
    (dict(lr_warmup_fraction=1.0), "optim.lr_warmup_fraction=1.0 must be in [0, 1)"),
    (dict(weight_decay_incr_style="linear", start_weight_decay=0.0),
     "optim.weight_decay_incr_style='linear' needs optim.start_weight_decay and optim.end_weight_decay"),
    (dict(weight_decay=0.1, end_weight_decay=0.2),
     "optim.end_weight_decay=0.2 must equal optim.weight_decay=0.1 (or be None) with "
     "optim.weight_decay_incr_style='constant'"),
    (dict(weight_decay_incr_style="cosine", start_weight_decay=0.2, end_weight_decay=0.1),
     "optim.start_weight_decay=0.2 must be between 0 and optim.end_weight_decay=0.1"),
    (dict(decoupled_min_lr=1e-5), "optim.decoupled_min_lr=1e-05 needs optim.decoupled_lr"),
    (dict(decoupled_lr=1e-4, decoupled_min_lr=1e-3), "optim.decoupled_min_lr=0.001 must be between 0 and "
                                                     "optim.decoupled_lr=0.0001"),
])
def test_schedule_settings_that_do_not_go_together(optim, message):
  c = base_config()
  c.optim.update(**optim)
  with pytest.raises(ConfigError, match=re.escape(message)):
    validate(c)


def _abstract_params(c):
  """The GPT model's parameter tree (shapes and dtypes) for config `c`."""
  model = GPTModel(model_spec(c))
  key = jax.random.key(0)
  boxed = jax.eval_shape(lambda: model.init({"params": key, "router": key}, jnp.zeros((1, 8), jnp.int32))["params"])
  is_box = lambda b: isinstance(b, nn.Partitioned)  # noqa: E731
  return jax.tree.map(lambda b: b.value if is_box(b) else b, boxed, is_leaf=is_box)


@pytest.mark.parametrize("untie", [True, False])
def test_decoupled_lr_moves_embedding_and_output_layer_by_their_own(small_moe_config, untie):
  """Two updates with optim.decoupled_lr: the embedding and output layer (the one tied table when
  tied) move as optax.adamw with the decoupled learning rate moves them, every other leaf (the MTP
  depth's included: it shares both) as optax.adamw with lr; each one's decay is times its own lr."""
  c = small_moe_config()
  c.model.update(untie_embeddings_and_output_weights=untie, mtp_num_layers=1)
  c.optim.update(lr=1e-2, min_lr=1e-3, lr_decay_style="linear", lr_warmup_iters=0, decoupled_lr=5e-2,
                 decoupled_min_lr=5e-3, weight_decay=0.1, clip_grad=0.0, adam_beta2=0.95)
  c.train.train_iters = 4
  validate(c, 1)
  abstract = _abstract_params(c)
  assert ("output_layer" in abstract) == untie and "mtp_0" in abstract
  rng = np.random.default_rng(0)
  draw = lambda: jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), abstract)  # noqa: E731
  params0, grads = draw(), [draw(), draw()]

  def run(opt):
    params, state = params0, opt.init(params0)
    for g in grads:
      updates, state = jax.jit(opt.update)(g, state, params)
      params = optax.apply_updates(params, updates)
    return params

  o = c.optim
  by_hand = {decoupled: run(optax.adamw(lr_schedule(c, decoupled), b1=o.adam_beta1, b2=o.adam_beta2, eps=o.adam_eps,
                                        weight_decay=o.weight_decay, mask=decay_mask)) for decoupled in (False, True)}
  got = run(make_optimizer(c))
  for path, leaf in jax.tree_util.tree_flatten_with_path(got)[0]:
    decoupled = path[0].key in ("embedding", "output_layer")
    want = jax.tree_util.tree_flatten_with_path(by_hand[decoupled])[0]
    np.testing.assert_allclose(leaf, dict(want)[path], rtol=1e-6, atol=1e-7, err_msg=jax.tree_util.keystr(path))
  table = lambda p: np.asarray(p["embedding"]["embedding"])  # noqa: E731
  moved = lambda p: np.abs(table(p) - table(params0)).mean()  # noqa: E731
  assert moved(got) > 3 * moved(by_hand[False])  # the decoupled lr is 5x


@pytest.mark.parametrize("bf16_moments", [False, True])
def test_state_of_existing_checkpoints_is_unchanged(small_moe_config, bf16_moments):
  """A constant weight decay, with or without optim.decoupled_lr, keeps the optimizer state that
  make_optimizer built before the two settings (optax.adamw with a float decay): same tree, shapes and
  dtypes, so the checkpoints of existing runs restore. A weight-decay schedule adds optax's step count."""
  c = small_moe_config()
  c.optim.update(use_precision_aware_optimizer=bf16_moments, exp_avg_dtype="bf16" if bf16_moments else "fp32")
  abstract, o = _abstract_params(c), c.optim
  before = optax.chain(optax.clip_by_global_norm(o.clip_grad),
                       optax.adamw(lr_schedule(c), b1=o.adam_beta1, b2=o.adam_beta2, eps=o.adam_eps,
                                   weight_decay=o.weight_decay, mask=decay_mask))
  before = precision_aware(before, o.exp_avg_dtype, o.exp_avg_sq_dtype) if bf16_moments else keep_state_dtypes(before)
  shapes = lambda opt: jax.eval_shape(opt.init, abstract)  # noqa: E731
  want = shapes(before)
  for optim in (dict(), dict(decoupled_lr=1e-3, decoupled_min_lr=1e-4)):
    c.optim.update(**optim)
    got = shapes(make_optimizer(c))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert jax.tree.leaves(got) == jax.tree.leaves(want)
  c.optim.update(weight_decay_incr_style="linear", start_weight_decay=0.0, end_weight_decay=0.1)
  assert len(jax.tree.leaves(shapes(make_optimizer(c)))) == len(jax.tree.leaves(want)) + 1
