"""Distributed optimizer (ZeRO-1) and FSDP with EP on 8 emulated devices: three training steps equal
one device's (losses, master params and Adam moments, fp32, 1e-5), the optimizer state per device is
total/dp, and the compiled step holds less memory than with the optimizer state replicated.

~15 s of compilation per layout on 2 CPU cores: by default ZeRO-1 at ep=4 (dense state over dp=8,
expert state over edp=2, half of it in pinned host memory), FSDP with ep=4 and the undistributed
baseline; dp=8 without ep with -m slow.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import model_spec
from moejax.models.decoder import relayout
from moejax.models.gpt import GPTModel
from moejax.parallel.sharding import batch_sharding, replicated, shard_bytes
from moejax.train.optim import lr_schedule, make_optimizer
from moejax.train.state import TrainState, setup
from moejax.train.step import make_train_step

LAYOUTS = {
    "ep4_offload": dict(parallel=dict(ep=4), optim=dict(optimizer_cpu_offload=0.5)),
    "fsdp_ep4": dict(parallel=dict(ep=4, fsdp=True), optim=dict()),
    "replicated_dp8": dict(parallel=dict(), optim=dict(use_distributed_optimizer=False)),
    "dp8": dict(parallel=dict(), optim=dict()),
}


def _cfg(small_moe_config, parallel=(), optim=()):
  """The small MoE, wide and on short sequences: weights and optimizer state, not activations,
  fill most of the memory, as in a real model."""
  c = small_moe_config(aux_loss_coeff=1e-2, z_loss_coeff=1e-3)
  c.model.update(hidden_size=128, ffn_hidden_size=256)
  c.moe.update(ffn_hidden_size=256)
  c.train.update(micro_batch_size=1, global_batch_size=8, seq_length=16)
  # adam_eps well above fp32 noise: a weight whose gradient is ~0 then moves by ~0 on every layout
  # (with 1e-8 its update is lr * sign of rounding noise)
  c.optim.update(lr=1e-3, min_lr=1e-3, lr_decay_style="constant", adam_eps=1e-4, **dict(optim))
  c.parallel.update(**dict(parallel))
  return c


def _tree_bytes(abstract, shardings, kind=None):
  return sum(shard_bytes(a, s) for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
             if kind is None or (s.memory_kind or "device") == kind)


def _run(cfg, devices, state0, batches):
  """(losses, final state, compiled step, abstract state, shardings) of three steps from `state0`."""
  parts = setup(cfg, devices)
  mesh, rules, model, optimizer = parts.layout.mesh, parts.rules, parts.model, parts.optimizer
  abstract, shardings, placement = parts.abstract, parts.shardings, parts.placement
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state = jax.device_put(state0, shardings)
    bsh = batch_sharding(mesh, rules, 3)
    step = jax.jit(make_train_step(model, optimizer, lr_schedule(cfg), placement=placement),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, replicated(mesh)))
    compiled = step.lower(state, jax.device_put(batches[0], bsh)).compile()
    losses = []
    for b in batches:
      state, metrics = compiled(state, jax.device_put(b, bsh))
      losses.append(float(metrics["loss"]))
  return losses, state, compiled, abstract, shardings


@pytest.fixture(scope="module")
def one_device(small_moe_config):
  """Step-0 state, three batches [1 micro-batch, 8 rows, seq+1] and the one-device run (one micro-batch
  as on 8 devices: the aux loss counts over a micro-batch)."""
  cfg = _cfg(small_moe_config)
  cfg.train.micro_batch_size = 8
  model, optimizer = GPTModel(model_spec(cfg)), make_optimizer(cfg)
  params = nn.unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, cfg.train.seq_length), jnp.int32))["params"])
  state0 = jax.device_get(TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                                     moe_state={}))  # eagerly: no compile
  batches = [np.asarray(jax.random.randint(jax.random.key(s), (1, 8, 17), 0, 257)) for s in range(3)]
  losses, state, *_ = _run(cfg, jax.devices()[:1], state0, batches)
  return batches, state0, losses, jax.device_get(state)


@pytest.fixture(scope="module")
def layouts(small_moe_config, one_device):
  """layouts(name): the three steps on 8 devices, compiled once per module."""
  batches, state0, *_ = one_device
  cache = {}

  def get(name):
    if name not in cache:
      cfg = _cfg(small_moe_config, **LAYOUTS[name])
      cache[name] = _run(cfg, jax.devices(), state0, batches)  # the same 8 rows, one per device
    return cache[name]
  return get


def _close(a, b, tol):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=tol, atol=tol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow if n == "dp8" else ())
                                  for n in ("ep4_offload", "fsdp_ep4", "dp8")])
def test_three_steps_equal_one_device_and_state_is_sharded(one_device, layouts, name):
  """Same losses, master params and Adam moments (the moments carry the gradients of all three
  steps) as one device; optimizer bytes per device = total / 8 within 10%."""
  _, _, losses1, state1 = one_device
  losses, state, _, abstract, shardings = layouts(name)
  np.testing.assert_allclose(losses, losses1, rtol=1e-5, atol=1e-5)
  state = jax.device_get(state)
  _close(state.params, state1.params, 1e-5)
  _close(state.opt_state, state1.opt_state, 1e-5)
  total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract.opt_state))
  per_device = _tree_bytes(abstract.opt_state, shardings.opt_state)
  print(f"{name}: optimizer state {per_device} B per device, {total} B in all ({total / per_device:.2f}x)")
  assert per_device == pytest.approx(total / 8, rel=0.1)


def test_fsdp_with_per_layer_params_equals_one_device(small_moe_config, one_device):
  """model.scan_layers=False under FSDP (ep=4): each layer's leaves (decoder/layer_k) sharded over
  data and gathered as that layer runs; three steps give the one-device losses and params."""
  batches, state0, losses1, state1 = one_device
  cfg = _cfg(small_moe_config, **LAYOUTS["fsdp_ep4"])
  cfg.model.scan_layers = False
  pattern = model_spec(cfg).moe_pattern
  per_layer = lambda p: {**p, "decoder": relayout(p["decoder"], pattern, False)}  # noqa: E731
  params0 = per_layer(state0.params)
  start = TrainState(state0.step, params0, make_optimizer(cfg).init(params0), {})  # zero moments either way
  losses, state, compiled, abstract, shardings = _run(cfg, jax.devices(), start, batches)
  np.testing.assert_allclose(losses, losses1, rtol=1e-5, atol=1e-5)
  _close(jax.device_get(state.params), per_layer(state1.params), 1e-5)
  w1 = shardings.params["decoder"]["layer_0"]["moe"]["experts"]["w1"]
  assert shard_bytes(abstract.params["decoder"]["layer_0"]["moe"]["experts"]["w1"], w1) * 8 == \
      abstract.params["decoder"]["layer_0"]["moe"]["experts"]["w1"].size * 4  # a slice on each device
  parts = setup(cfg, jax.devices())
  with jax.set_mesh(parts.layout.mesh), nn.logical_axis_rules(parts.rules):
    compute = jax.eval_shape(parts.placement.compute_params, abstract.params)
  boxed = lambda x: isinstance(x, nn.LogicallyPartitioned)  # noqa: E731  (gathered where the layer runs)
  assert all(boxed(x) for x in jax.tree.leaves(compute["decoder"]["layer_1"], is_leaf=boxed))
  assert not boxed(compute["embedding"]["embedding"])


def test_optimizer_state_offloaded_in_part(layouts):
  """optim.optimizer_cpu_offload=0.5: about half the optimizer bytes live in pinned host memory,
  and stay there across steps (the update visits the device only)."""
  _, state, _, abstract, shardings = layouts("ep4_offload")
  host = _tree_bytes(abstract.opt_state, shardings.opt_state, "pinned_host")
  total = _tree_bytes(abstract.opt_state, shardings.opt_state)
  print(f"optimizer state in pinned host memory: {host} of {total} B per device")
  assert 0.3 < host / total < 0.7
  on_host = [leaf for leaf in jax.tree.leaves(state.opt_state) if leaf.sharding.memory_kind == "pinned_host"]
  assert on_host and sum(leaf.addressable_shards[0].data.nbytes for leaf in on_host) == host


@pytest.mark.parametrize("async_save", [True, False])
def test_offloaded_state_saves_and_restores(layouts, tmp_path, async_save):
  """A checkpoint of a state with leaves in pinned host memory: checksummed (on the device), saved
  and restored into the same placement, equal. The checksums failed on host-memory leaves
  ("memory_space of all inputs passed to `xor` must be the same"), so such runs never saved."""
  from moejax.checkpoint.manager import CheckpointManager
  _, state, _, abstract, shardings = layouts("ep4_offload")
  with CheckpointManager(str(tmp_path), save_interval=1, max_to_keep=1, async_save=async_save) as ckpt:
    ckpt.prepare(abstract, shardings)
    assert ckpt.save(3, state)
    ckpt.wait()
    restored, _ = ckpt.restore(abstract, shardings)
  saved = state.checkpointed()
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved)):
    assert a.sharding.memory_kind == b.sharding.memory_kind
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(leaf.sharding.memory_kind == "pinned_host" for leaf in jax.tree.leaves(restored.opt_state))


def test_distributed_optimizer_lowers_compiled_memory(layouts):
  """The compiled step per device: arguments (masters + moments) fall 8x, the whole step falls;
  the step all-gathers the params and the replicated layout does not."""
  _, _, replicated_step, *_ = layouts("replicated_dp8")
  _, _, sharded_step, *_ = layouts("fsdp_ep4")
  _, _, zero1_step, *_ = layouts("ep4_offload")
  rows = {}
  for name, c in (("replicated", replicated_step), ("ZeRO-1", zero1_step), ("FSDP", sharded_step)):
    m = c.memory_analysis()
    rows[name] = (m.argument_size_in_bytes, m.temp_size_in_bytes, m.argument_size_in_bytes + m.temp_size_in_bytes)
    print(f"{name}: arguments {rows[name][0]} B, temporaries {rows[name][1]} B, together {rows[name][2]} B")
  assert rows["FSDP"][0] < rows["replicated"][0] / 4
  assert rows["ZeRO-1"][2] < rows["replicated"][2] and rows["FSDP"][2] < rows["replicated"][2]
  gathers = lambda c: len(re.findall(r"\ball-gather(?:-start)?\(", c.as_text()))  # noqa: E731
  assert gathers(zero1_step) > gathers(replicated_step)


@pytest.mark.slow
def test_muon_three_steps_equal_one_device_and_restore(small_moe_config, tmp_path):
  """optim.optimizer='muon' with QK-clip (MuonClip) under ZeRO-1 at ep=2 × tp=2 (Megatron refuses Muon
  with its distributed optimizer; under GSPMD the sharded momentum is only a placement), half the state
  in pinned host memory: three steps equal one device's (losses, params, momentum and Adam moments); the
  state, masked per optimizer, saves and restores. `duplicated`: the whole matrices, as on one device (`blockwise`
  orthogonalizes tp blocks by design, tests/train/test_muon.py)."""
  from moejax.checkpoint.manager import CheckpointManager
  muon = dict(optimizer="muon", muon_tp_mode="duplicated", muon_fp32_matmul_prec="highest")
  clip = dict(qk_clip=True, qk_clip_threshold=0.05)  # MuonClip: every head clips each step
  cfg = _cfg(small_moe_config, optim=muon)
  cfg.model.update(clip)
  cfg.train.micro_batch_size = 8
  model, optimizer = GPTModel(model_spec(cfg)), make_optimizer(cfg)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, cfg.train.seq_length), jnp.int32))
  params = nn.unbox(variables["params"])
  state0 = jax.device_get(TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                                     moe_state=variables["moe_state"]))  # the attention logits' maxima
  batches = [np.asarray(jax.random.randint(jax.random.key(s), (1, 8, 17), 0, 257)) for s in range(3)]
  losses1, state1, *_ = _run(cfg, jax.devices()[:1], state0, batches)
  cfg = _cfg(small_moe_config, parallel=dict(ep=2, tp=2, sequence_parallel=True),
             optim=dict(muon, optimizer_cpu_offload=0.5))
  cfg.model.update(clip)
  losses, state, _, abstract, shardings = _run(cfg, jax.devices(), state0, batches)
  np.testing.assert_allclose(losses, losses1, rtol=1e-5, atol=1e-5)
  assert losses[2] < losses[0]
  _close(jax.device_get(state.params), jax.device_get(state1.params), 1e-5)
  _close(jax.device_get(state.opt_state), jax.device_get(state1.opt_state), 1e-5)
  with CheckpointManager(str(tmp_path), save_interval=1, max_to_keep=1, async_save=False) as ckpt:
    ckpt.prepare(abstract, shardings)
    assert ckpt.save(3, state)
    restored, _ = ckpt.restore(abstract, shardings)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state.checkpointed())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
