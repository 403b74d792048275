"""Both token dispatchers on 8 emulated devices equal one device, in the EP × TP(SP) × ETP layouts
and the folded ones (attention tp/dp vs MoE etp/ep/edp over the same devices)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.config import ConfigError, ModelSpec, MoESpec, RouterSpec, base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.moe import dispatch
from moejax.moe.layer import MoELayer
from moejax.parallel.sharding import batch_sharding
from moejax.train.optim import make_optimizer
from moejax.train.state import TrainState, state_shardings
from moejax.train.step import make_train_step
from moejax.train.validate import validate

LAYOUTS = {  # cp stays 1 until context parallelism lands
    "ep8": dict(ep=8),
    "ep4": dict(ep=4),
    "tp2sp_ep4": dict(tp=2, sequence_parallel=True, ep=4, etp=1),
    "ep2_etp2": dict(ep=2, etp=2),
    "fold_tp2_ep8": dict(tp=2, sequence_parallel=True, ep=8, etp=1),      # attention dp=4, MoE edp=1
    "fold_tp2_ep4_etp2": dict(tp=2, sequence_parallel=True, ep=4, etp=2),  # attention dp=4, MoE edp=1
}
DISPATCHERS = {
    "allgather": dict(token_dispatcher_type="allgather"),
    "alltoall": dict(token_dispatcher_type="alltoall"),                                  # worst-case buffer
    "alltoall_cf1": dict(token_dispatcher_type="alltoall", exchange_capacity_factor=1.0),  # bounded buffer
}
SPEC = ModelSpec(hidden_size=16, dtype="float32", init_method_std=0.3,
                 moe=MoESpec(num_experts=8, ffn_hidden_size=8, shared_expert_intermediate_size=8,
                             router=RouterSpec(router_topk=2)))


def _layout_cfg(**parallel):
  c = base_config()
  c.model.update(num_attention_heads=4, num_query_groups=2, vocab_size=64)
  c.moe.update(num_experts=8)
  c.train.update(seq_length=8, global_batch_size=8)
  c.parallel.update(**parallel)
  return c




def _layer_value_and_grads(spec, params, x, cot, layout=None):
  """((loss, layer output), (param grads, input grads))."""
  def loss(p, x):
    out = MoELayer(spec).apply({"params": p}, x)[0]
    return jnp.sum(out * cot), out
  f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
  if layout is None:
    return jax.device_get(f(params, x))
  mesh, rules = layout
  with jax.set_mesh(mesh.mesh), nn.logical_axis_rules(rules):
    return jax.device_get(f(params, x))


def _close(a, b, tol):
  for (path, u), v in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(u, v, rtol=tol, atol=tol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def layer_case():
  x = jax.random.normal(jax.random.key(1), (8, 8, SPEC.hidden_size))
  params = nn.unbox(jax.jit(MoELayer(SPEC).init)(jax.random.key(0), x)["params"])
  cot = jax.random.normal(jax.random.key(2), x.shape)
  return params, x, cot, _layer_value_and_grads(SPEC, params, x, cot)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in ("ep4", "ep2_etp2") else n
                                  for n in LAYOUTS])  # ep4, ep2_etp2 slow: ep8 and the folded ones cover them
def test_layer_output_and_grads_match_one_device_for_every_dispatcher(layer_case, mesh_and_rules, name):
  params, x, cot, ref = layer_case
  layout = mesh_and_rules(_layout_cfg(**LAYOUTS[name]))
  outs = {}
  for kind, kw in DISPATCHERS.items():
    spec = SPEC.replace(**kw)
    outs[kind] = _layer_value_and_grads(spec, params, x, cot, layout)
    _close(outs[kind], ref, 1e-5)
  for kind in ("alltoall", "alltoall_cf1"):  # dispatchers agree with each other (outputs, fp32)
    _close(outs[kind][0][1], outs["allgather"][0][1], 1e-6)


@pytest.mark.parametrize("policy", ["probs", pytest.param("position", marks=pytest.mark.slow)])  # one policy by default
def test_capacity_drops_match_one_device_and_both_dispatchers_drop_the_same_pairs(layer_case, mesh_and_rules,
                                                                                 policy):
  """expert_capacity_factor=0.5: the router drops pairs globally; every device sizes its expert
  buffers to E_l × capacity and skips exactly those pairs, in the folded tp2/ep4/etp2 layout."""
  params, x, cot, _ = layer_case
  spec = SPEC.replace(expert_capacity_factor=0.5, token_drop_policy=policy)
  ref = _layer_value_and_grads(spec, params, x, cot)
  layout = mesh_and_rules(_layout_cfg(**LAYOUTS["fold_tp2_ep4_etp2"]))
  outs = {kind: _layer_value_and_grads(spec.replace(**kw), params, x, cot, layout)
          for kind, kw in DISPATCHERS.items()}
  for kind, out in outs.items():
    _close(out, ref, 1e-5)
    _close(out[0][1], outs["allgather"][0][1], 1e-6)


def _pairs_per_rank_pair(idx_TK, devices, ranks, experts):
  """Max (source device, destination rank) pair count when the batch is split over `devices`."""
  per_dev = np.asarray(idx_TK).reshape(devices, -1)
  return max(np.bincount(row // (experts // ranks), minlength=ranks).max() for row in per_dev)


@pytest.mark.parametrize("imbalanced", [False, True])
def test_bounded_alltoall_buffer_and_its_overflow_path_are_exact(layer_case, mesh_and_rules, imbalanced):
  """ep=4: C = 8 rows per rank pair (T·K = 16). Balanced routing fits C (the exchange path);
  routing every token to experts 0 and 1 (rank 0) overflows it and takes the allgather path."""
  params, x, cot, ref = layer_case
  if imbalanced:
    params = jax.tree.map(lambda v: v, params)
    x = x.at[..., 0].set(jnp.abs(x[..., 0]) + 2.0)
    params["router"]["kernel"] = params["router"]["kernel"].at[0, :2].set(4.0)
    ref = _layer_value_and_grads(SPEC, params, x, cot)
  from moejax.moe.router import TopKRouter
  route = TopKRouter(SPEC).apply({"params": params["router"]}, x.reshape(64, -1))
  C = dispatch.exchange_rows_per_rank(8, 2, 4, 1.0)
  assert C == 8
  assert (_pairs_per_rank_pair(route.idx_TK, 8, 4, 8) > C) == imbalanced
  spec = SPEC.replace(**DISPATCHERS["alltoall_cf1"])
  _close(_layer_value_and_grads(spec, params, x, cot, mesh_and_rules(_layout_cfg(ep=4))), ref, 1e-5)


def _model_cfg(dispatcher, **parallel):
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16, shared_expert_intermediate_size=16,
               layer_freq=[0, 1], aux_loss_coeff=1e-2, z_loss_coeff=1e-3, **DISPATCHERS[dispatcher])
  c.train.update(seq_length=16, micro_batch_size=1, global_batch_size=8)
  c.optim.update(lr=1e-2, min_lr=1e-2, lr_decay_style="constant")
  c.parallel.update(**parallel)
  return c


def _three_steps(mesh_and_rules, cfg, devices, params0, batches):
  layout, rules = mesh_and_rules(cfg, devices)
  model = GPTModel(model_spec(cfg))
  optimizer = make_optimizer(cfg)
  with nn.logical_axis_rules(rules):
    _, shardings = state_shardings(model, optimizer, cfg.train.seq_length, layout.mesh, rules)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    params = jax.device_put(params0, shardings.params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params),
                       moe_state={})  # no expert bias in this config
    step = jax.jit(make_train_step(model, optimizer, optax.constant_schedule(cfg.optim.lr)),
                   in_shardings=(shardings, batch_sharding(layout.mesh, rules, 3)))
    losses = []
    for b in batches:
      state, metrics = step(state, b)
      losses.append(float(metrics["loss"]))
  return losses


@pytest.fixture(scope="module")
def model_case(mesh_and_rules):
  cfg = _model_cfg("allgather")
  batches = [jax.random.randint(jax.random.key(s), (1, 8, 17), 0, 64) for s in range(3)]
  params = nn.unbox(jax.jit(GPTModel(model_spec(cfg)).init)(jax.random.key(0), batches[0][0, :, :-1])["params"])
  return params, batches, _three_steps(mesh_and_rules, cfg, jax.devices()[:1], params, batches)


# ~30 s of compilation each on 2 CPU cores: the richest layout runs by default, the rest with -m slow.
MODEL_CASES = [pytest.param(name, d, marks=() if name == "fold_tp2_ep4_etp2" else pytest.mark.slow, id=f"{name}-{d}")
               for name in LAYOUTS for d in ("allgather", "alltoall")]


@pytest.mark.parametrize("name,dispatcher", MODEL_CASES)
def test_three_training_steps_match_one_device(model_case, mesh_and_rules, name, dispatcher):
  params, batches, ref = model_case
  losses = _three_steps(mesh_and_rules, _model_cfg(dispatcher, **LAYOUTS[name]), jax.devices(), params, batches)
  assert losses[0] != losses[2]  # the steps train
  np.testing.assert_allclose(losses, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("parallel,moe,match", [
    (dict(ep=3), {}, "not divisible by parallel.ep=3"),
    (dict(ep=4, etp=4), {}, "parallel.etp\\*ep\\*pp=16 does not divide the 8 devices"),
    (dict(tp=2, ep=2), {}, "needs parallel.sequence_parallel=True"),
    (dict(ep=2, etp=3), {}, "not divisible by parallel.etp=3"),
    ({}, dict(token_dispatcher_type="deepep"), "moe.token_dispatcher_type"),
    ({}, dict(token_exchange="nvshmem"), "moe.token_exchange"),
    ({}, dict(exchange_capacity_factor=0.5), "moe.exchange_capacity_factor=0.5 must be >= 1.0"),
    ({}, dict(shared_expert_gate=True), "needs moe.shared_expert_intermediate_size"),
])
def test_impossible_layouts_and_dispatch_settings_are_rejected(parallel, moe, match):
  cfg = _layout_cfg(**parallel)
  cfg.moe.update(ffn_hidden_size=16, **moe)
  with pytest.raises(ConfigError, match=match):
    validate(cfg, 8)


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_pallas_grouped_gemm_traces_under_shard_map(mesh_and_rules, kind):
  """Regression: Pallas outputs came back typed invariant inside shard_map, and the custom VJPs
  (ours and the kernel's) rejected the gradient types at trace time (seen on GPU). Tracing the
  bf16 gradient with impl='pallas' on an ep=2 mesh checks the types without running the kernels."""
  cfg = _layout_cfg(ep=2)
  cfg.train.update(seq_length=64, global_batch_size=8)
  layout, rules = mesh_and_rules(cfg)
  spec = ModelSpec(hidden_size=128, init_method_std=0.05, dtype="bfloat16",
                   moe=MoESpec(num_experts=4, ffn_hidden_size=128, grouped_gemm_impl="pallas")).replace(
                       router_topk=2, token_dispatcher_type=kind)
  x = jax.ShapeDtypeStruct((8, 64, 128), jnp.bfloat16)
  params = jax.eval_shape(lambda: nn.unbox(MoELayer(spec).init(jax.random.key(0), jnp.zeros(x.shape, x.dtype))))
  grad = jax.grad(lambda p, x: jnp.sum(MoELayer(spec).apply(p, x)[0].astype(jnp.float32) ** 2))
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    g = jax.eval_shape(grad, params, x)
  assert jax.tree.structure(g) == jax.tree.structure(params)
