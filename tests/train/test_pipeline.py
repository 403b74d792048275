"""Pipeline and context parallelism through the real train step on 8 emulated devices: three steps
equal the single-device run (fp32, 1e-5) in the loss and every gradient of every step, the MoE
losses, the expert-bias state and the final params.

Every gradient is read exactly from the optimizer state: with adam_beta1=0 and no clipping,
Adam's first moment after a step is that step's gradient (the distributed optimizer's shards,
gathered).

Compile time is the cost on 2 CPU cores, so the layouts share one tiny model (4 or 8 layers,
dense and MoE layers mixed, sigmoid routing with the expert bias, aux and z losses) and by default
run one layout with all of them: pp with virtual stages around TP+SP, CP and EP in one stage; the
issue's list is there in full as `slow` tests.
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
from moejax.parallel.sharding import batch_sharding, replicated
from moejax.train.optim import make_optimizer
from moejax.train.state import TrainState, setup
from moejax.train.step import jit_train_step
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


def _step(cfg, devices):
  """(jitted train step, state shardings, batch sharding, mesh, rules) as moejax/train/loop.py builds them."""
  validate(cfg, len(devices))
  parts = setup(cfg, devices)
  layout, rules, shardings = parts.layout, parts.rules, parts.shardings
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    step = jit_train_step(cfg, parts, replicated(layout.mesh))
  return step, parts.abstract, shardings, batch_sharding(layout.mesh, rules, 3), layout.mesh, rules


def _run(cfg, devices, state0, batches):
  """(per-step metrics, per-step Adam first moments = gradients, final state) of three steps."""
  step, _, shardings, bsh, mesh, rules = _step(cfg, devices)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
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
  one.train.calculate_per_token_loss = cfg.train.calculate_per_token_loss
  key = str(one)
  if key not in _ONE_DEVICE:
    model, optimizer = GPTModel(model_spec(one)), make_optimizer(one)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, one.train.seq_length), jnp.int32))
    params = nn.unbox(variables["params"])
    state0 = jax.device_get(TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=optimizer.init(params), moe_state=variables.get("moe_state", {})))
    vocab = one.model.vocab_size
    batches = [np.array(jax.random.randint(jax.random.key(s), (NUM_MICRO, ROWS, one.train.seq_length + 1), 0,
                                             vocab)) for s in range(3)]
    if one.data.reset_attention_mask or one.data.eod_mask_loss:  # documents: eod tokens every few positions
      for b in batches:
        b[np.random.default_rng(0).random(b.shape) < 0.2] = one.data.eod
    _ONE_DEVICE[key] = (state0, batches, _run(one, jax.devices()[:1], state0, batches))
  return _ONE_DEVICE[key]


def _close(got, want, what):
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=TOL, atol=TOL,
                               err_msg=f"{what}{jax.tree_util.keystr(path)}")


TIED = dict(untie_embeddings_and_output_weights=False)  # the head on the last stage, the table on the first
LAYOUTS = {
    # name: (num_layers, parallel, model, data, in the default run)
    "pp2_vpp2_tp2_cp2_ep2_sp": (8, dict(pp=2, vpp=2, tp=2, cp=2, ep=2, sequence_parallel=True), TIED, {}, True),
    "pp4_vpp2": (8, dict(pp=4, vpp=2), TIED, {}, False),
    "pp2": (4, dict(pp=2), {}, {}, False),
    "pp2_uneven_layout": (4, dict(pp=2, pipeline_layout="Et|tttL"), {}, {}, False),
    "pp2_ep2_tp2_sp": (4, dict(pp=2, ep=2, tp=2, sequence_parallel=True), {}, {}, False),
    "cp2_ep4": (4, dict(cp=2, ep=4), {}, {}, False),
    "cp4_documents": (4, dict(cp=4), {}, dict(reset_attention_mask=True, reset_position_ids=True, eod=1), False),
    "cp2_pp2_ep2": (4, dict(cp=2, pp=2, ep=2), {}, {}, False),
    "cp2_mla": (4, dict(cp=2), dict(multi_latent_attention=True, q_lora_rank=12, kv_lora_rank=8, qk_head_dim=8,
                                    qk_pos_emb_head_dim=4, v_head_dim=6), {}, False),
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if LAYOUTS[n][4] else pytest.mark.slow)
                                  for n in LAYOUTS])
def test_three_steps_equal_one_device(name):
  """Losses (total, LM, aux, z), gradient norms, every gradient of every step, expert biases and
  final params on 8 devices equal one device's. The default run is one compile: pp=2 x vpp=2
  (interleaved virtual stages) x tp=2 (SP) x cp=2 x ep=2 (pp around TP, SP, CP and EP folded into
  one stage) with tied embeddings (untied in the slow ones). The issue's layouts are slow, each
  covered by it: pp2, pp4_vpp2, pp2_ep2_tp2_sp, cp2_ep4 and cp2_pp2_ep2 directly;
  pp2_uneven_layout by its uneven-slot machinery (tables: tests/models/test_stages.py);
  cp4_documents by its cp attention (with document masks: tests/parallel/test_context.py);
  cp2_mla because MLA reaches the same cp `attend`."""
  num_layers, parallel, model, data, _ = LAYOUTS[name]
  _check_equals_one_device(_cfg(num_layers, parallel, model, data))


@pytest.mark.slow
def test_cp_selective_recompute_equals_one_device():
  """cp=2 with MLA and the function-level recompute choices (core_attn around cp's ring attention,
  mla_up_proj, moe_act: `layers.memory.recompute_after_cotangent`): 3 steps equal one device."""
  cfg = _cfg(4, dict(cp=2), LAYOUTS["cp2_mla"][2])
  cfg.train.update(recompute_granularity="selective", recompute_modules=("core_attn", "mla_up_proj", "moe_act"))
  _check_equals_one_device(cfg)


@pytest.mark.slow
def test_pp_module_recompute_equals_one_device():
  """pp=2 with ep=2, tp=2 (SP) and the module-level recompute choices (layernorm, mlp, moe:
  `nn.remat` of the module, expert bias included): 3 steps equal one device."""
  cfg = _cfg(4, dict(pp=2, ep=2, tp=2, sequence_parallel=True), {})
  cfg.train.update(recompute_granularity="selective", recompute_modules=("layernorm", "mlp", "moe"))
  _check_equals_one_device(cfg)


@pytest.mark.slow
def test_pp_per_token_loss_equals_one_device():
  """pp=2 with ep=2 on eod-masked tokens with train.calculate_per_token_loss: the pipeline weighs each
  micro-batch's LM and MoE losses by the step's loss tokens as gradient accumulation does (whose weighting
  tests/train/test_loss.py checks against Megatron's definition)."""
  cfg = _cfg(4, dict(pp=2, ep=2), {}, dict(eod_mask_loss=True, eod=1))
  cfg.train.calculate_per_token_loss = True
  _check_equals_one_device(cfg)


def _check_equals_one_device(cfg):
  state0, batches, (metrics1, grads1, state1) = _one_device(cfg)
  metrics8, grads8, state8 = _run(cfg, jax.devices(), state0, batches)
  for k in ("loss", "lm_loss", "aux_loss", "z_loss", "grad_norm"):
    np.testing.assert_allclose([m[k] for m in metrics8], [m[k] for m in metrics1], rtol=TOL, atol=TOL, err_msg=k)
  np.testing.assert_array_equal(metrics8[-1]["tokens_per_expert"], metrics1[-1]["tokens_per_expert"])
  for s in range(3):
    _close(grads8[s], grads1[s], f"step {s + 1} gradient ")
  _close(state8.moe_state, state1.moe_state, "moe_state ")
  _close(state8.params, state1.params, "params ")


def _temp_bytes(pp, num_micro, kind="1f1b"):
  """Per-device temporary bytes of the compiled step and the bytes of one stored stage input
  [rows, seq, hidden]: a dense model (the pipeline, not the MoE layer, is under test), one layer
  per stage, 4 rows x 64 tokens x hidden 64 per micro-batch and device."""
  c = base_config()
  c.model.update(num_layers=pp, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, dtype="float32")
  c.train.update(seq_length=64, micro_batch_size=4, global_batch_size=4 * num_micro * 8 // pp)
  c.parallel.update(pp=pp, pipeline_schedule=kind)
  step, abstract, _, _, mesh, rules = _step(c, jax.devices())
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = jax.ShapeDtypeStruct((num_micro, 4 * 8 // pp, c.train.seq_length + 1), jnp.int32)
    temp = step.lower(abstract, batch).compile().memory_analysis().temp_size_in_bytes
  return temp, c.train.micro_batch_size * c.train.seq_length * c.model.hidden_size * 4


@pytest.mark.slow
def test_activation_memory_grows_with_pp_not_with_micro_batches():
  """1f1b keeps pp·(vpp+1)−1 stage inputs per stage whatever the number of micro-batches. The
  compiled step's temporary memory (`memory_analysis()`, per device) at 16 micro-batches is within
  10% of that at 4 (pp=2; measured: equal to 128 bytes); gpipe, which keeps all 16 inputs, holds
  at least 90% of 13 inputs more (measured: exactly 13), so the measure sees stored inputs. pp=4
  keeps 7 inputs instead of 3 (XLA's buffer report shows the store growing by exactly 4; other
  buffers shift with dp=2 instead of 4): the total must grow by at least 2 inputs (measured 3.1)."""
  t4, one_input = _temp_bytes(2, 4)
  t16, _ = _temp_bytes(2, 16)
  assert abs(t16 - t4) <= 0.1 * t4, (t4, t16)
  gpipe16, _ = _temp_bytes(2, 16, "gpipe")
  assert gpipe16 - t16 >= 0.9 * 13 * one_input, (gpipe16, t16, one_input)
  pp4, _ = _temp_bytes(4, 16)
  assert pp4 - t16 >= 2 * one_input, (pp4, t16, one_input)
