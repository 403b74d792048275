"""Upcycling a dense model into a MoE one (moe.use_upcycling): granularity 1 computes the dense
function exactly at step 0; granular upcycling (G=2) equals the dense MLP with weights
(gate·c, up·c, down·c/G), c = G^(1/3) (moejax/moe/upcycling.py); both then train from the
upcycled checkpoint 0."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.checkpoint.manager import save_params
from moejax.config import base_config, model_spec
from moejax.data.loader import make_dataset
from moejax.models.decoder import stack_layers, unstack_layers
from moejax.models.gpt import GPTModel
from moejax.train.loop import make_eval_step, train
from moejax.train.start import upcycle_params

TOKENS = jax.random.randint(jax.random.key(1), (2, 16), 0, 257)


def _cfg(granularity=1, layer_freq=1, pre_softmax=False):
  c = base_config()
  c.model.update(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, num_query_groups=2,
                 vocab_size=257, dtype="float32")
  c.moe.update(num_experts=4 * granularity, router_topk=2 * granularity, ffn_hidden_size=64 // granularity,
               use_upcycling=True, upcycling_granularity=granularity, layer_freq=layer_freq,
               router_pre_softmax=pre_softmax)
  c.train.update(seq_length=16, micro_batch_size=4, global_batch_size=4, train_iters=4, log_interval=100)
  c.optim.update(lr=1e-2, min_lr=1e-3, lr_warmup_iters=0)
  c.logging.tensorboard = False
  return c


def _dense_spec(spec):
  return spec.replace(num_experts=None, use_upcycling=False)


def _init(spec, seed):
  return jax.jit(lambda k: nn.unbox(GPTModel(spec).init(k, TOKENS)["params"]))(jax.random.key(seed))


def _logits(spec, params):
  return jax.jit(lambda p: GPTModel(spec).apply({"params": p}, TOKENS)[0])(params)


def _upcycled(spec, dense_params):
  dense = _dense_spec(spec)
  return jax.jit(lambda d, m: upcycle_params(d, m, dense.moe_pattern, spec.moe_pattern, spec))(
      dense_params, _init(spec, 1))


def _scaled(dense_params, c, G):
  """The dense params with every MLP's (gate, up, down) scaled by (c, c, c/G)."""
  def scale(path, w):
    name = path[-1].key
    return w * {"gate": c, "up": c, "down": c / G}[name] if path[-2].key == "mlp" else w
  return jax.tree_util.tree_map_with_path(scale, dense_params)


def test_decoder_layers_unstack_and_stack_back():
  pattern = (False, True, False, True, True, True)  # segments: [dense, moe] x 2, then [moe] x 2
  params = {"segment_0": {"block_0": {"mlp": jnp.array([0, 2])}, "block_1": {"moe": jnp.array([1, 3])}},
            "segment_1": {"block_0": {"moe": jnp.array([4, 5])}}}
  layers = unstack_layers(params, pattern)
  assert [int(next(iter(layer.values()))) for layer in layers] == [0, 1, 2, 3, 4, 5]
  assert [next(iter(layer)) for layer in layers] == ["mlp", "moe", "mlp", "moe", "moe", "moe"]
  back = stack_layers(layers, pattern)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  per_layer = stack_layers(layers, pattern, scan_layers=False)  # model.scan_layers=False: layer_k
  assert list(per_layer) == [f"layer_{k}" for k in range(6)] and unstack_layers(per_layer, pattern) == layers


@pytest.mark.parametrize("layer_freq,scan_layers", [(1, True), ((1, 0), True), ((1, 0), False)],
                         ids=["all-moe", "moe-then-dense", "moe-then-dense-per-layer"])
def test_granularity_1_gives_the_dense_logits(layer_freq, scan_layers):
  """Top-k routing with softmax after top-k: a token's K probs sum to 1 over K copies of the MLP."""
  spec = model_spec(_cfg(layer_freq=layer_freq)).replace(scan_layers=scan_layers)
  dense = _init(_dense_spec(spec), 0)
  np.testing.assert_allclose(_logits(spec, _upcycled(spec, dense)), _logits(_dense_spec(spec), dense),
                             rtol=1e-5, atol=1e-5)


def test_granular_upcycling_gives_the_documented_relation():
  """G=2, E=8 (4 copies of 2 slices), K=4: equals the dense MLP with (gate·c, up·c, down·c/G), c=G^(1/3);
  not the dense model itself (SiLU is not linear), though close to it."""
  spec = model_spec(_cfg(granularity=2))
  dense = _init(_dense_spec(spec), 0)
  got = _logits(spec, _upcycled(spec, dense))
  np.testing.assert_allclose(got, _logits(_dense_spec(spec), _scaled(dense, 2 ** (1 / 3), 2)), rtol=1e-5, atol=1e-5)
  plain = _logits(_dense_spec(spec), dense)
  assert not np.allclose(got, plain, atol=1e-5) and np.allclose(got, plain, atol=0.05)


def test_router_columns_form_virtual_groups():
  spec = model_spec(_cfg(granularity=2))
  moe = _init(spec, 1)
  up = _upcycled(spec, _init(_dense_spec(spec), 0))
  k_in = moe["decoder"]["segment_0"]["block_0"]["moe"]["router"]["kernel"]  # [L, H, E]
  k_out = up["decoder"]["segment_0"]["block_0"]["moe"]["router"]["kernel"]
  np.testing.assert_array_equal(k_out, jnp.repeat(k_in[..., :4], 2, axis=-1))


@pytest.mark.parametrize("granularity", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_upcycled_model_is_saved_at_step_0_then_trains(tmp_path, granularity):
  """From a dense weights-only checkpoint: checkpoint 0 holds the upcycled model, step 1's loss is
  the dense model's (G=1) or the scaled one's (G=2), and the loss falls. G=2 is slow (its own
  compile): the loop path is G=1's and the G=2 weights are test_granular_upcycling's."""
  cfg = _cfg(granularity=granularity)
  cfg.data.source = "pydoc"
  spec = model_spec(cfg)
  dense = _init(_dense_spec(spec), 0)
  save_params(str(tmp_path / "dense"), dense)
  cfg.checkpoint.load_params = str(tmp_path / "dense")
  rows = train(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "0")  # the upcycled state, saved before training
  reference = dense if granularity == 1 else _scaled(dense, 2 ** (1 / 3), 2)
  batch = make_dataset(cfg, 1)[0]
  want = float(jax.jit(make_eval_step(GPTModel(_dense_spec(spec))))(reference, batch)[0])
  assert rows[0]["lm_loss"] == pytest.approx(want, rel=1e-5)
  losses = [r["lm_loss"] for r in rows]
  assert all(np.isfinite(losses)) and losses[-1] < losses[0]
