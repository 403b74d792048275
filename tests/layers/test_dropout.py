"""Megatron's dropout: hidden dropout zeroes its share and scales the rest, in training only; attention
dropout equals softmax attention written out in NumPy with the same keep mask; a model run without a
'dropout' rng (evaluation, init) is the model without dropout; a layout of 8 devices draws the masks
one device draws (three steps' losses equal)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from moejax.config import base_config, model_spec
from moejax.layers.attention import attend
from moejax.layers.dropout import hidden_dropout, step_rngs
from moejax.models.gpt import GPTModel


class _Drop(nn.Module):
  rate: float

  @nn.compact
  def __call__(self, x):
    return hidden_dropout(self, x, self.rate)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_hidden_dropout_zeroes_its_share_and_scales_the_rest(rate):
  x = jax.random.normal(jax.random.key(0), (256, 512)) + 3.0  # no exact zeros
  y = np.asarray(_Drop(rate).apply({}, x, rngs={"dropout": jax.random.key(1)}))
  kept = y != 0
  assert abs(1 - kept.mean() - rate) < 0.01
  np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
  np.testing.assert_array_equal(_Drop(rate).apply({}, x), x)  # no dropout rng: evaluation
  np.testing.assert_array_equal(_Drop(0.0).apply({}, x, rngs={"dropout": jax.random.key(1)}), x)


def test_attention_dropout_equals_numpy_with_the_same_mask():
  c = base_config()
  c.model.update(dtype="float32", attention_dropout=0.2)
  spec = model_spec(c)
  rng = np.random.default_rng(0)
  B, S, N, K, D = 2, 24, 4, 2, 8
  q, k, v = (rng.normal(size=(B, S, n, D)).astype(np.float32) for n in (N, K, K))
  seg = np.cumsum(rng.random((B, S)) < 0.1, axis=1)
  key = jax.random.key(3)
  got = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), spec, 0.4, dropout_key=key)
  keep = np.asarray(jax.random.bernoulli(key, 0.8, (B, K, N // K, S, S)))  # [b, kv head, group, q, k]
  G = N // K
  s = np.einsum("bqkgd,bskd->bkgqs", q.reshape(B, S, K, G, D).astype(np.float64), k) * 0.4
  see = np.tril(np.ones((S, S), bool))[None] & (seg[:, :, None] == seg[:, None, :])
  s = np.where(see[:, None, None], s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True) * keep / 0.8
  want = np.einsum("bkgqs,bskd->bqkgd", p, v).reshape(B, S, N, D)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  plain = attend(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), spec, 0.4)  # no key: none
  assert not np.allclose(plain, got)


def test_a_model_without_a_dropout_rng_is_the_model_without_dropout():
  c = base_config()
  c.model.update(num_layers=2, hidden_size=64, dtype="float32", hidden_dropout=0.1, attention_dropout=0.1)
  model = GPTModel(model_spec(c))
  tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 257)
  variables = model.init({"params": jax.random.key(0), "router": jax.random.key(0)}, tokens)
  c.model.update(hidden_dropout=0.0, attention_dropout=0.0)
  plain = GPTModel(model_spec(c)).apply(variables, tokens)[0]
  np.testing.assert_array_equal(model.apply(variables, tokens)[0], plain)
  dropped = model.apply(variables, tokens, rngs=step_rngs(jax.random.key(1)))[0]
  assert not np.allclose(dropped, plain)


def test_eight_devices_draw_the_masks_one_device_draws(small_moe_config, tmp_path):
  """Hidden and attention dropout at 0.2 through the train loop: dp=4 x tp=2 with sequence parallelism and
  ep=2 (the masks drawn on sharded arrays) gives one device's losses over three steps, and they are not
  the losses without dropout."""
  from moejax.train.loop import train
  losses = {}
  eight = dict(tp=2, sequence_parallel=True, ep=2)
  for name, devices, parallel, rate in (("one", 1, {}, 0.2), ("eight", 8, eight, 0.2), ("none", 1, {}, 0.0)):
    cfg = small_moe_config()
    cfg.model.update(hidden_dropout=rate, attention_dropout=rate)
    cfg.train.update(train_iters=3, micro_batch_size=4 if devices == 1 else 1, log_interval=100)
    cfg.parallel.update(**parallel)
    cfg.logging.tensorboard = False
    losses[name] = [r["loss"] for r in train(cfg, str(tmp_path / name), devices=jax.devices()[:devices])]
  np.testing.assert_allclose(losses["eight"], losses["one"], rtol=1e-5)
  assert not np.allclose(losses["one"], losses["none"], rtol=1e-3)
