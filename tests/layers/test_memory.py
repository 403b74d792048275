"""Activation memory: every recompute choice keeps fewer bytes for the backward pass, every offload
name moves its values to pinned host memory, and the compiled gradient holds less memory with
recomputation while losses and gradients stay equal (fp32, 1e-6).

Residual bytes come from `jax.ad_checkpoint.print_saved_residuals` (tracing only, no compile), so
every choice is checked by default; the compiled comparison covers none / full / all selective
modules / all offload names (`-m slow`: each choice compiled alone). XLA:CPU ignores host memory
placement (its lowering drops the offload annotations), so offloading is checked on the traced
residuals here and measured on a GPU by benchmarks/memory.py.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import ModelSpec, MoESpec, RouterSpec
from moejax.layers.memory import NAMES, OFFLOADABLE, block_policy
from moejax.metrics.memory import saved_activation_bytes
from moejax.models.gpt import GPTModel
from moejax.train.loss import loss_fn

# dense and MoE layers (with shared experts), so every submodule a choice names exists; eight of
# them so that kept activations, not one layer's backward pass, decide the compiled peak
SPEC = ModelSpec(num_layers=8, hidden_size=32, ffn_hidden_size=64, dtype="float32",
                 moe=MoESpec(num_experts=8, ffn_hidden_size=32, shared_expert_intermediate_size=16,
                             layer_freq=(0, 1) * 4,
                             shared_expert_overlap=False, router=RouterSpec(router_topk=2)))
SELECTIVE = ("core_attn", "moe_act", "layernorm", "mlp", "moe", "shared_experts")
TOKENS = np.asarray(jax.random.randint(jax.random.key(0), (4, 33), 0, 257))


def _choice(**recompute):
  return SPEC.replace(**recompute)


def _grad_fn(spec):
  model = GPTModel(spec)
  return jax.value_and_grad(lambda p, t: loss_fn(model, p, t)[0])


def _assert_same(loss, grads, loss0, grads0):
  np.testing.assert_allclose(loss, loss0, rtol=1e-6, atol=1e-6)
  for (path, g), g0 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads0)):
    np.testing.assert_allclose(g, g0, rtol=1e-6, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def residual_bytes(spec, params):
  """(device bytes, pinned host bytes) the backward pass keeps (parameters not counted)."""
  return saved_activation_bytes(lambda p, t: loss_fn(GPTModel(spec), p, t)[0], params, TOKENS)


@pytest.fixture(scope="module")
def params():
  return nn.unbox(jax.jit(GPTModel(SPEC).init)(jax.random.key(0), TOKENS[:, :-1])["params"])


@pytest.fixture(scope="module")
def baseline(params):
  return residual_bytes(SPEC, params)


@pytest.mark.parametrize("recompute", [dict(recompute_granularity="full")] + [
    dict(recompute_granularity="selective", recompute_modules=(m,)) for m in SELECTIVE],
    ids=["full"] + list(SELECTIVE))
def test_each_recompute_choice_keeps_fewer_bytes(params, baseline, recompute):
  dev, host = residual_bytes(_choice(**recompute), params)
  print(f"{recompute}: {dev} B kept for the backward pass, {baseline[0]} B without recomputation")
  assert host == 0 and dev < baseline[0]


def test_each_offload_name_moves_its_values_to_host(params, baseline):
  """Offloading moves bytes, recomputes none: device + host bytes are the same whatever is
  offloaded, and each name puts its own values (q, k and v for core_attn) in pinned host memory."""
  kept = {}
  for name in OFFLOADABLE:
    dev, host = residual_bytes(_choice(offload_modules=(name,)), params)
    kept[name] = (dev, host)
    print(f"offload {name}: {dev} B on the device, {host} B in pinned host memory")
    assert host > 0 and dev < baseline[0]
  totals = {dev + host for dev, host in kept.values()}
  assert len(totals) == 1
  B, S, H = TOKENS.shape[0], TOKENS.shape[1] - 1, SPEC.hidden_size
  assert kept["attn_norm"][1] == SPEC.num_layers * B * S * H * 4  # every layer's block input, fp32
  all_dev, all_host = residual_bytes(_choice(offload_modules=OFFLOADABLE), params)
  assert all_dev + all_host in totals and all_host == sum(h for _, h in kept.values())


def test_policy_only_when_needed():
  assert block_policy(SPEC) is None
  assert block_policy(_choice(offload_modules=("core_attn",))) is not None
  assert block_policy(SPEC.replace(fsdp=True)) is not None
  assert set(OFFLOADABLE) <= set(NAMES)


COMPILED = {
    "none": dict(),
    "full": dict(recompute_granularity="full"),
    "selective_all": dict(recompute_granularity="selective", recompute_modules=SELECTIVE),
    "offload_all": dict(offload_modules=OFFLOADABLE),
}
COMPILED_SLOW = {m: dict(recompute_granularity="selective", recompute_modules=(m,)) for m in SELECTIVE}


@pytest.fixture(scope="module")
def compiled(params):
  cache = {}

  def get(name):
    if name not in cache:
      c = jax.jit(_grad_fn(_choice(**{**COMPILED, **COMPILED_SLOW}[name]))).lower(params, TOKENS).compile()
      cache[name] = (c.memory_analysis().temp_size_in_bytes, jax.device_get(c(params, TOKENS)))
    return cache[name]
  return get


@pytest.mark.parametrize("name", ["full", "selective_all", "offload_all"] + [
    pytest.param(m, marks=pytest.mark.slow) for m in SELECTIVE])
def test_compiled_memory_falls_losses_unchanged(compiled, name):
  temp0, (loss0, grads0) = compiled("none")
  temp, (loss, grads) = compiled(name)
  print(f"{name}: compiled temporaries {temp} B, {temp0} B without recomputation")
  _assert_same(loss, grads, loss0, grads0)
  if name != "offload_all":  # CPU keeps "host" values in the same memory
    assert temp < temp0


# MLA (DeepSeek-V2/V3 attention): its up-projection and core attention are recomputed by the same
# function-level mechanism as moe_act (`recompute_after_cotangent`)
MLA = SPEC.replace(num_layers=2, layer_freq=(0, 1), multi_latent_attention=True, num_attention_heads=4,
                   num_query_groups=4, q_lora_rank=12, kv_lora_rank=8, qk_head_dim=8, qk_pos_emb_head_dim=4,
                   v_head_dim=8)


@pytest.mark.parametrize("modules", [("mla_up_proj",), ("core_attn",), ("mla_up_proj", "core_attn", "moe_act")],
                         ids="+".join)
def test_mla_recompute_keeps_fewer_bytes_same_gradients(modules):
  params = nn.unbox(jax.jit(GPTModel(MLA).init)(jax.random.key(0), TOKENS[:, :-1])["params"])
  chosen = MLA.replace(recompute_granularity="selective", recompute_modules=modules)
  (dev0, _), (dev, host) = residual_bytes(MLA, params), residual_bytes(chosen, params)
  assert host == 0 and dev < dev0
  loss0, grads0 = jax.jit(_grad_fn(MLA))(params, TOKENS)
  loss, grads = jax.jit(_grad_fn(chosen))(params, TOKENS)
  _assert_same(loss, grads, loss0, grads0)
