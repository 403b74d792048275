"""Pipeline and context parallelism through the real train step on 8 emulated devices: three steps
equal the single-device run (fp32, 1e-5) in the loss and every gradient of every step, the MoE
losses, the expert-bias state and the final params.

Every gradient is read exactly from the optimizer state: with adam_beta1=0 and no clipping,
Adam's first moment after a step is that step's gradient (the distributed optimizer's shards,
gathered).

Compile time is the cost on 2 CPU cores, so the layouts share one tiny model (4 or 8 layers,
dense and MoE layers mixed, sigmoid routing with the expert bias, aux and z losses) and by default
run three layouts that between them cover the pipeline with virtual stages, pp with EP and TP+SP,
and cp with pp and EP; the others are `slow` (their docstring ids say which default covers them).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.config import base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.parallel.mesh import make_mesh
from moejax.parallel.sharding import batch_sharding, logical_axis_rules, replicated
from moejax.train.optim import lr_schedule, make_optimizer
from moejax.train.pipeline import forward_backward_of
from moejax.train.state import TrainState, state_placement, state_shardings
from moejax.train.step import make_train_step
from moejax.train.validate import validate

NUM_MICRO, ROWS = 4, 4  # micro-batches per step, rows per micro-batch (over all dp ranks)
TOL = 1e-5


def _cfg(num_layers=4, parallel=(), model=(), data=()):
  c = base_config()
  c.model.update(num_layers=num_layers, hidden_size=16, ffn_hidden_size=32, num_attention_heads=4,
                 num_query_groups=2, vocab_size=64, dtype="float32", **dict(model))
  c.moe.update(num_experts=4, router_topk=2, ffn_hidden_size=16, layer_freq=[0] + [1] * (num_layers - 1),
               router_score_function="sigmoid", router_enable_expert_bias=True, aux_loss_coeff=1e-2,
               z_loss_coeff=1e-3)
  c.train.update(seq_length=16, micro_batch_size=ROWS, global_batch_size=ROWS * NUM_MICRO)
  c.optim.update(lr=1e-3, min_lr=1e-3, lr_decay_style="constant", adam_beta1=0.0, clip_grad=0.0, adam_eps=1e-4)
  c.data.update(**dict(data))
  for k, v in dict(parallel).items():
    setattr(c.parallel, k, v)
  if c.parallel.pp * c.parallel.cp * c.parallel.tp > 1:  # the same rows per micro-batch over dp
    c.train.micro_batch_size = ROWS // (8 // (c.parallel.pp * c.parallel.cp * c.parallel.tp))
  return c


def _run(cfg, devices, state0, batches):
  """(per-step losses and metrics, per-step Adam first moments = gradients, final state) of the
  train step as moejax/train/loop.py builds it."""
  validate(cfg, len(devices))
  layout = make_mesh(cfg, devices)
  rules = logical_axis_rules(layout, cfg.parallel.sequence_parallel)
  model, optimizer = GPTModel(model_spec(cfg)), make_optimizer(cfg)
  seq = cfg.train.seq_length
  with nn.logical_axis_rules(rules):
    _, shardings = state_shardings(model, optimizer, seq, layout.mesh, rules, layout, cfg)
    placement = state_placement(model, seq, layout.mesh, rules, shardings, layout, cfg)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    fwd_bwd = forward_backward_of(cfg, model, seq)
    bsh = batch_sharding(layout.mesh, rules, 3)
    step = jax.jit(make_train_step(model, optimizer, lr_schedule(cfg), fwd_bwd, placement=placement),
                   in_shardings=(shardings, bsh), out_shardings=(shardings, replicated(layout.mesh)))
    state = jax.device_put(state0, shardings)
    metrics, grads = [], []
    for b in batches:
      state, m = step(state, jax.device_put(b, bsh))
      metrics.append(jax.device_get(m))
      grads.append(jax.device_get(_adam_mu(state.opt_state)))
  return metrics, grads, jax.device_get(state)


def _adam_mu(opt_state):
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  (adam,) = [s for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  return adam.mu


_ONE_DEVICE = {}


def _one_device(cfg):
  """Step-0 state, three batches and the single-device run of `cfg`'s model (cached per model)."""
  one = _cfg(cfg.model.num_layers)
  one.model.update(**{k: v for k, v in cfg.model.items() if k != "num_layers"})
  one.data.update(**cfg.data)
  key = str(one)
  if key not in _ONE_DEVICE:
    model, optimizer = GPTModel(model_spec(one)), make_optimizer(one)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, one.train.seq_length), jnp.int32))
    params = nn.unbox(variables["params"])
    state0 = jax.device_get(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=optimizer.init(params), moe_state=variables.get("moe_state", {})))
    vocab = one.model.vocab_size
    batches = [np.asarray(jax.random.randint(jax.random.key(s), (NUM_MICRO, ROWS, one.train.seq_length + 1), 0,
                                             vocab)) for s in range(3)]
    if one.data.reset_attention_mask:  # documents: eod tokens every few positions
      for b in batches:
        b[np.random.default_rng(0).random(b.shape) < 0.2] = one.data.eod
    _ONE_DEVICE[key] = (state0, batches, _run(one, jax.devices()[:1], state0, batches))
  return _ONE_DEVICE[key]


def _close(got, want, what):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=TOL, atol=TOL,
                               err_msg=f"{what}{jax.tree_util.keystr(path)}")


LAYOUTS = {
    # name: (num_layers, parallel, model, data, default?)
    "pp2": (4, dict(pp=2), {}, {}, False),  # covered by pp4_vpp2
    "pp4_vpp2": (8, dict(pp=4, vpp=2), {}, {}, True),
    "pp2_uneven_layout": (4, dict(pp=2, pipeline_layout="Et|tttL"), {}, {}, False),  # covered by pp4_vpp2
    "pp2_ep2_tp2_sp": (4, dict(pp=2, ep=2, tp=2, sequence_parallel=True), {}, {}, True),
    "cp2_ep4": (4, dict(cp=2, ep=4), {}, {}, False),  # covered by cp2_pp2_ep2
    "cp4_documents": (4, dict(cp=4), {}, dict(reset_attention_mask=True, reset_position_ids=True), False),
    "cp2_pp2_ep2": (4, dict(cp=2, pp=2, ep=2), {}, {}, True),
    "cp2_mla": (4, dict(cp=2), dict(multi_latent_attention=True, q_lora_rank=12, kv_lora_rank=8, qk_head_dim=8,
                                    qk_pos_emb_head_dim=4, v_head_dim=6), {}, False),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if LAYOUTS[n][4] else pytest.mark.slow)
                                  for n in LAYOUTS])
def test_three_steps_equal_one_device(name):
  """Losses (total, LM, aux, z), gradient norms, every gradient of every step, expert biases and
  final params on 8 devices equal one device's. Slow ones and the default test covering their
  code: pp2 and pp2_uneven_layout by pp4_vpp2 (uneven slots by the stage tables of
  tests/models/test_stages.py), cp2_ep4 and cp4_documents by cp2_pp2_ep2 (cp attention with documents by
  tests/parallel/test_context.py), cp2_mla by cp2_pp2_ep2 (MLA reaches the same `attend`)."""
  num_layers, parallel, model, data, _ = LAYOUTS[name]
  cfg = _cfg(num_layers, parallel, model, data)
  state0, batches, (metrics1, grads1, state1) = _one_device(cfg)
  metrics8, grads8, state8 = _run(cfg, jax.devices(), state0, batches)
  for k in ("loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"):
    np.testing.assert_allclose([m[k] for m in metrics8], [m[k] for m in metrics1], rtol=TOL, atol=TOL, err_msg=k)
  np.testing.assert_array_equal(metrics8[-1]["tokens_per_expert"], metrics1[-1]["tokens_per_expert"])
  for s in range(3):
    _close(grads8[s], grads1[s], f"step {s + 1} gradient ")
  _close(state8.moe_state, state1.moe_state, "moe_state ")
  _close(state8.params, state1.params, "params ")
