"""The whole model's loss and gradients on 8 emulated devices equal one device's (fp32)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import base_config, model_spec
from moejax.models.gpt import GPTModel
from moejax.parallel.sharding import batch_sharding
from moejax.train.loss import loss_fn


def _cfg(train=(), **parallel):
  c = base_config()
  c.model.update(num_layers=3, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=64, dtype="float32")
  c.moe.update(num_experts=8, router_topk=2, ffn_hidden_size=16, shared_expert_intermediate_size=16,
               layer_freq=[0, 1, 1], aux_loss_coeff=1e-2, z_loss_coeff=1e-3)
  c.train.update(seq_length=16, micro_batch_size=1, global_batch_size=8, **dict(train))
  c.parallel.update(**parallel)
  return c


def _loss_and_grads(mesh_and_rules, cfg, devices, params, tokens):
  layout, rules = mesh_and_rules(cfg, devices)
  model = GPTModel(model_spec(cfg))
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(model.init, jax.random.key(0), tokens[:, :-1])["params"]
    param_sh = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), layout.mesh, rules)
  with jax.set_mesh(layout.mesh), nn.logical_axis_rules(rules):
    params = jax.device_put(params, param_sh)
    tokens = jax.device_put(tokens, batch_sharding(layout.mesh, rules, 2, leading_microbatch=False))
    f = jax.jit(jax.value_and_grad(lambda p, t: loss_fn(model, p, t)[0]))
    loss, grads = f(params, tokens)
  return float(loss), jax.device_get(grads)


@pytest.fixture(scope="module")
def single_device(mesh_and_rules):
  cfg = _cfg()
  tokens = jax.random.randint(jax.random.key(7), (8, cfg.train.seq_length + 1), 0, cfg.model.vocab_size)
  params = nn.unbox(jax.jit(GPTModel(model_spec(cfg)).init)(jax.random.key(0), tokens[:, :-1])["params"])
  loss, grads = _loss_and_grads(mesh_and_rules, cfg, jax.devices()[:1], params, tokens)
  return params, tokens, loss, grads


@pytest.mark.parametrize("parallel", [
    dict(),                                        # dp=8
    dict(ep=4),                                    # dp=8 outside the MoE, ep=4 x edp=2 inside
    dict(tp=2, ep=2, sequence_parallel=True),      # dp=4; etp=tp=2, ep=2, edp=2
    dict(tp=2),                                    # dp=4; no SP: each etp rank has all the rows
    dict(tp=2, ep=2, sequence_parallel=True,       # the same, every module-level choice recomputed
         train=dict(recompute_granularity="selective",
                    recompute_modules=("layernorm", "mlp", "moe", "shared_experts"))),
], ids=["dp8", "ep4", "tp2_ep2", "tp2", "tp2_ep2_recompute"])
def test_loss_and_grads_match_single_device(single_device, mesh_and_rules, parallel):
  params, tokens, loss1, grads1 = single_device
  assert len(jax.devices()) == 8
  loss8, grads8 = _loss_and_grads(mesh_and_rules, _cfg(**parallel), jax.devices(), params, tokens)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-4, atol=1e-4)
  flat1 = jax.tree_util.tree_leaves_with_path(grads1)
  flat8 = jax.tree.leaves(grads8)
  for (path, g1), g8 in zip(flat1, flat8):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_deepseek_v3_pieces_match_single_device(mesh_and_rules):
  """MLA (q and kv LoRA, YaRN, biases), sigmoid group-limited routing with an expert bias, an MTP
  depth and tied embeddings: tp=2 + SP with ep=2 on 8 devices equals one device."""
  cfg = _cfg()
  cfg.moe.layer_freq = [0, 1]
  cfg.model.update(num_layers=2, multi_latent_attention=True, num_query_groups=4, q_lora_rank=12, kv_lora_rank=8, qk_head_dim=8,
                   qk_pos_emb_head_dim=4, v_head_dim=6, qk_layernorm=True, add_qkv_bias=True,
                   attention_output_bias=True, rope_type="yarn", rotary_scaling_factor=4.0,
                   original_max_position_embeddings=8, mscale_all_dim=1.0, mtp_num_layers=1,
                   untie_embeddings_and_output_weights=False)
  cfg.moe.update(router_score_function="sigmoid", router_enable_expert_bias=True, router_num_groups=4,
                 router_group_topk=2, router_group_scoring="sum_top2", router_topk_scaling_factor=2.5,
                 aux_loss_coeff=0.0, z_loss_coeff=0.0)
  tokens = jax.random.randint(jax.random.key(7), (8, cfg.train.seq_length + 1), 0, cfg.model.vocab_size)
  params = nn.unbox(jax.jit(GPTModel(model_spec(cfg)).init)(jax.random.key(0), tokens[:, :-1])["params"])
  loss1, grads1 = _loss_and_grads(mesh_and_rules, cfg, jax.devices()[:1], params, tokens)
  cfg.parallel.update(tp=2, ep=2, sequence_parallel=True)
  loss8, grads8 = _loss_and_grads(mesh_and_rules, cfg, jax.devices(), params, tokens)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-4, atol=1e-4)
  for (path, g1), g8 in zip(jax.tree_util.tree_leaves_with_path(grads1), jax.tree.leaves(grads8)):
    np.testing.assert_allclose(g8, g1, rtol=1e-4, atol=1e-4, err_msg=jax.tree_util.keystr(path))
