"""The train step's compute copy (TrainState.compute_params, moejax/train/step.py): the bf16 masters
the previous update wrote, read instead of casting every master at the start of each step. It is
the masters cast, bit for bit, changes no number against the step that casts (one device, and
ZeRO-1 with ep=8 on 8 devices), is kept only for masters each device holds whole (placed as they
are), and is not checkpointed. With bf16 masters the step keeps the state's dtypes.

Megatron's --log-params-norm / --log-num-zeros-in-grad (logging.log_params_norm,
logging.log_num_zeros_in_grad): the step's `params_norm` and `num_zeros_in_grad` equal NumPy's on
the returned params and the accumulated gradients, on one device and on 8 (ZeRO-1 over dp/ep,
TP+SP with FSDP, the pipeline)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.checkpoint.manager import CheckpointManager
from moejax.parallel.sharding import batch_sharding, replicated
from moejax.train.optim import lr_schedule
from moejax.train.state import init_state, setup, with_compute_copy
from moejax.train.step import jit_train_step, make_train_step
from moejax.train.validate import validate


def _bf16(small_moe_config, **parallel):
  cfg = small_moe_config(aux_loss_coeff=1e-2)
  cfg.model.dtype = "bfloat16"
  cfg.train.update(micro_batch_size=1, global_batch_size=8)
  cfg.parallel.update(**parallel)
  return cfg


def _is_cast(copy, params):
  """Each kept leaf is its master cast to bf16; returns how many are kept."""
  kept = 0
  for c, p in zip(jax.tree.leaves(copy, is_leaf=lambda x: x is None), jax.tree.leaves(params)):
    if c is not None:
      assert c.dtype == jnp.bfloat16 and c.sharding == p.sharding
      np.testing.assert_array_equal(np.asarray(c, np.float32), np.asarray(p.astype(jnp.bfloat16), np.float32))
      kept += 1
  return kept


def _three_steps(cfg, devices, carried: bool, tokens, placement=True):
  parts = setup(cfg, devices)
  mesh, rules = parts.layout.mesh, parts.rules
  shardings = parts.shardings if carried else parts.shardings.checkpointed()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = init_state(parts.model, parts.optimizer, cfg.train.seq_length, 0, parts.shardings)
    assert _is_cast(state.compute_params, state.params) > 0
    if not carried:
      state = state.checkpointed()
    bsh = batch_sharding(mesh, rules, 3)
    step = jax.jit(make_train_step(parts.model, parts.optimizer, lr_schedule(cfg),
                                   placement=parts.placement if placement else None),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, replicated(mesh)))
    losses = []
    for t in tokens:
      state, metrics = step(state, jax.device_put(t, bsh))
      losses.append(float(metrics["loss"]))
  return losses, state, parts


def _tokens(n=3):
  return [jax.random.randint(jax.random.key(s), (1, 8, 33), 0, 257) for s in range(n)]


def _same_run(small_moe_config, devices, placement=True, **parallel):
  cfg = _bf16(small_moe_config, **parallel)
  losses, state, parts = _three_steps(cfg, devices, True, _tokens(), placement)
  ref_losses, ref, _ = _three_steps(cfg, devices, False, _tokens(), placement)
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(ref.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  assert ref.compute_params is None
  return state, parts


@pytest.mark.parametrize("placement", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_compute_copy_changes_no_number_on_one_device(small_moe_config, placement, tmp_path):
  state, parts = _same_run(small_moe_config, jax.devices()[:1], placement)
  floating = [p for p in jax.tree.leaves(state.params) if jnp.issubdtype(p.dtype, jnp.floating)]
  assert _is_cast(state.compute_params, state.params) == len(floating)  # written by the last update, every leaf
  # the whole state through a checkpoint: saved and restored without the copy, cast again after
  with CheckpointManager(str(tmp_path), save_interval=1, max_to_keep=1, async_save=False) as ckpt:
    ckpt.save(3, state)
    restored, _ = ckpt.restore(parts.abstract, parts.shardings)
  assert restored.compute_params is None
  for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  again = with_compute_copy(restored, "bfloat16", parts.shardings)
  assert _is_cast(again.compute_params, state.params) == len(floating)


def test_compute_copy_only_for_whole_masters_under_zero1(small_moe_config):
  """ep=8 on 8 devices (dp=8, edp=1): the experts' masters are whole on each device and keep a copy;
  the dense masters are sharded over dp, cast on their shards each step, and keep none."""
  state, parts = _same_run(small_moe_config, jax.devices(), ep=8)
  with_path = jax.tree_util.tree_flatten_with_path
  copies = with_path(state.compute_params, is_leaf=lambda x: x is None)[0]
  masters, logical = dict(with_path(state.params)[0]), dict(with_path(parts.placement.compute)[0])
  kept = {jax.tree_util.keystr(path) for path, c in copies if c is not None}
  for path, _ in copies:
    whole = masters[path].sharding.is_equivalent_to(logical[path], masters[path].ndim)
    assert (jax.tree_util.keystr(path) in kept) == whole, jax.tree_util.keystr(path)
  assert kept and all("experts" in k for k in kept)
  assert len(kept) < len(copies)  # the dense masters are sharded: no copy
  _is_cast(state.compute_params, state.params)


@pytest.mark.parametrize("devices", [1, 8])
def test_bf16_masters_keep_the_state_dtypes(small_moe_config, devices):
  """model.params_dtype='bfloat16': Adam's moments start in bf16 and the update meets fp32 gradients;
  the state leaves the step in the dtypes it came in, so the step compiled once ahead (as train.py
  runs it) takes its own output for three steps (one device, and ZeRO-1 over dp=8)."""
  cfg = _bf16(small_moe_config)
  cfg.model.params_dtype = "bfloat16"
  cfg.optim.lr = 1e-2
  parts = setup(cfg, jax.devices()[:devices])
  mesh = parts.layout.mesh
  with jax.set_mesh(mesh), nn.logical_axis_rules(parts.rules):
    state = init_state(parts.model, parts.optimizer, cfg.train.seq_length, 0, parts.shardings)
    dtypes = jax.tree.map(lambda a: a.dtype, state)
    bsh = batch_sharding(mesh, parts.rules, 3)
    tokens = jax.device_put(_tokens(1)[0], bsh)
    step = jit_train_step(cfg, parts, replicated(mesh)).lower(state, tokens).compile()
    losses = []
    for _ in range(3):
      state, metrics = step(state, tokens)
      losses.append(float(metrics["loss"]))
  assert jax.tree.map(lambda a: a.dtype, state) == dtypes
  assert {p.dtype for p in jax.tree.leaves(state.params) if jnp.issubdtype(p.dtype, jnp.floating)} == {jnp.dtype(jnp.bfloat16)}
  assert np.all(np.isfinite(losses)) and losses[2] < losses[0], losses


LOOKED_UP = 100  # token ids < LOOKED_UP: the embedding rows above get exactly zero gradients


@functools.cache
def _logged_step(small_moe_config, n_devices: int, **parallel):
  """One step of two micro-batches of 8 rows with both options on: (metrics, params, gradients) on
  the host. With adam_beta1=0 and no clipping, Adam's first moment after the step is the gradient
  the optimizer saw (the distributed optimizer's shards gathered)."""
  cfg = small_moe_config()
  dp = n_devices // (parallel.get("tp", 1) * parallel.get("pp", 1))
  cfg.train.update(micro_batch_size=8 // dp, global_batch_size=16)
  cfg.optim.update(adam_beta1=0.0, clip_grad=0.0)
  cfg.logging.update(log_params_norm=True, log_num_zeros_in_grad=True)
  cfg.parallel.update(**parallel)
  devices = jax.devices()[:n_devices]
  validate(cfg, len(devices))
  parts = setup(cfg, devices)
  mesh = parts.layout.mesh
  tokens = jax.random.randint(jax.random.key(3), (2, 8, 33), 0, LOOKED_UP)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parts.rules):
    state = init_state(parts.model, parts.optimizer, cfg.train.seq_length, 0, parts.shardings)
    bsh = batch_sharding(mesh, parts.rules, 3)
    state, metrics = jit_train_step(cfg, parts, replicated(mesh))(state, jax.device_put(tokens, bsh))
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  (adam,) = [s for s in jax.tree.leaves(state.opt_state, is_leaf=is_adam) if is_adam(s)]
  return jax.device_get((metrics, state.params, adam.mu))


def _numpy_equal(metrics, params, grads):
  norm = np.sqrt(sum(np.sum(np.asarray(p, np.float64) ** 2) for p in jax.tree.leaves(params)))
  np.testing.assert_allclose(metrics["params_norm"], norm, rtol=1e-6)
  zeros = sum(int(np.sum(np.asarray(g) == 0)) for g in jax.tree.leaves(grads))
  assert metrics["num_zeros_in_grad"] == zeros
  vocab, hidden = params["embedding"]["embedding"].shape
  assert zeros >= (vocab - LOOKED_UP) * hidden  # the rows never looked up, at least


def test_params_norm_and_zeros_in_grad_equal_numpy_on_one_device(small_moe_config):
  """Both metrics against NumPy; with the options off (the default) the step has neither."""
  _numpy_equal(*_logged_step(small_moe_config, 1))
  cfg = small_moe_config()
  parts = setup(cfg, jax.devices()[:1])
  with jax.set_mesh(parts.layout.mesh), nn.logical_axis_rules(parts.rules):
    state = init_state(parts.model, parts.optimizer, cfg.train.seq_length, 0, parts.shardings)
    step = make_train_step(parts.model, parts.optimizer, lr_schedule(cfg), placement=parts.placement)
    _, metrics = jax.eval_shape(step, state, jax.ShapeDtypeStruct((2, 4, 33), jnp.int32))
  assert not {"params_norm", "num_zeros_in_grad"} & set(metrics)


@pytest.mark.parametrize("parallel", [dict(ep=8), dict(tp=2, sequence_parallel=True, ep=4, fsdp=True),
                                      dict(pp=2, ep=4)], ids=["ep8_zero1", "tp2_sp_ep4_fsdp", "pp2_ep4"])
def test_params_norm_and_zeros_in_grad_on_8_devices_equal_one_device(small_moe_config, parallel):
  """Each element counted once however it is sharded or replicated: the numbers of one device."""
  metrics, params, grads = _logged_step(small_moe_config, 8, **parallel)
  _numpy_equal(metrics, params, grads)
  one, _, _ = _logged_step(small_moe_config, 1)
  np.testing.assert_allclose(metrics["params_norm"], one["params_norm"], rtol=1e-6)
  assert metrics["num_zeros_in_grad"] == one["num_zeros_in_grad"]
