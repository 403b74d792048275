"""Multi-Token Prediction: mtp_num_layers=0 is exactly the base model; depth k reads the tokens up to
k places ahead and its loss is the cross-entropy against the label k places further on, logged
apart from the LM loss (metrics.jsonl `mtp_loss`)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.config import AttentionSpec, ModelSpec, MoESpec, RouterSpec
from moejax.models.gpt import GPTModel
from moejax.train.loss import loss_fn
from moejax.train.loop import train

BASE = ModelSpec(hidden_size=32, num_layers=1, ffn_hidden_size=48, vocab_size=40, dtype="float32", init_method_std=0.2,
                 attention=AttentionSpec(num_attention_heads=4, num_query_groups=2),
                 moe=MoESpec(num_experts=4, ffn_hidden_size=16, router=RouterSpec(router_topk=2)))
MTP = BASE.replace(mtp_num_layers=2, mtp_loss_scaling_factor=0.3)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 40, size=(2, 13)))


def _params(spec):
  init = jax.jit(lambda tokens: GPTModel(spec).init(jax.random.key(0), tokens)["params"])
  return nn.unbox(init(TOKENS[:, :-1]))


@jax.jit
def _mtp_forward(params, tokens):
  return GPTModel(MTP).apply({"params": params}, tokens, mtp=True)


def _loss(spec, params):
  return jax.jit(lambda p, t: loss_fn(GPTModel(spec), p, t))(params, TOKENS)


def test_without_mtp_layers_the_model_is_the_base_model():
  shapes = lambda spec: jax.eval_shape(GPTModel(spec).init, jax.random.key(0), TOKENS[:, :-1])  # noqa: E731
  base_shapes, mtp_shapes = shapes(BASE), shapes(MTP)
  assert set(mtp_shapes["params"]) - set(base_shapes["params"]) == {"mtp_0", "mtp_1"}
  assert jax.tree.structure(base_shapes) == jax.tree.structure(shapes(MTP.replace(mtp_num_layers=0)))
  with_mtp = _params(MTP)
  base = {k: v for k, v in with_mtp.items() if not k.startswith("mtp")}
  forward = lambda spec, p: jax.jit(GPTModel(spec).apply)({"params": p}, TOKENS[:, :-1])[0]  # noqa: E731
  np.testing.assert_array_equal(forward(BASE, base), forward(MTP, with_mtp))  # mtp=False: the base pass
  loss, (metrics, _) = _loss(BASE, base)
  assert "mtp_loss" not in metrics
  assert float(loss) == float(metrics["lm_loss"] + metrics["aux_loss"] + metrics["z_loss"])


def test_mtp_loss_is_the_cross_entropy_k_places_ahead_and_weighted():
  params = _params(MTP)
  inputs, labels = TOKENS[:, :-1], TOKENS[:, 1:]
  logits, _, mtp_logits = _mtp_forward(params, inputs)
  assert mtp_logits.shape == (2, *logits.shape)
  loss, (metrics, _) = _loss(MTP, params)
  S = inputs.shape[1]
  per_depth = []
  for k in (1, 2):  # depth k at position i predicts token i + k + 1 = labels[i + k]; positions i + k >= S have none
    ce = optax.softmax_cross_entropy_with_integer_labels(mtp_logits[k - 1][:, :S - k], labels[:, k:])
    per_depth.append(float(ce.mean()))
  np.testing.assert_allclose(metrics["mtp_loss"], np.mean(per_depth), rtol=1e-6)
  want = metrics["lm_loss"] + 0.3 * metrics["mtp_loss"] + metrics["aux_loss"] + metrics["z_loss"]
  np.testing.assert_allclose(loss, want, rtol=1e-6)


def test_depth_k_sees_tokens_up_to_k_ahead_only():
  params = _params(MTP)
  run = lambda t: _mtp_forward(params, t)[2]  # noqa: E731
  tokens = TOKENS[:, :-1]
  i = 4
  for k in (1, 2):
    ahead = run(tokens.at[:, i + k].set((tokens[:, i + k] + 1) % 40))
    beyond = run(tokens.at[:, i + k + 1].set((tokens[:, i + k + 1] + 1) % 40))
    base = run(tokens)
    assert not np.allclose(ahead[k - 1][:, i], base[k - 1][:, i])           # reads token i + k
    np.testing.assert_allclose(beyond[k - 1][:, :i + 1], base[k - 1][:, :i + 1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_mtp_loss_is_logged_in_training(small_moe_config, tmp_path):
  """End to end through the loop; fast coverage: loss_fn's `mtp_loss` metric (above) and the loop
  writing every scalar metric (tests/train/test_train.py)."""
  cfg = small_moe_config()
  cfg.model.update(mtp_num_layers=1, num_layers=1)
  cfg.train.update(train_iters=1, seq_length=16, micro_batch_size=2, global_batch_size=2)
  cfg.logging.tensorboard = False
  train(cfg, str(tmp_path), devices=jax.devices()[:1])
  row = json.loads(open(tmp_path / "metrics.jsonl").readline())
  assert row["mtp_loss"] > 0 and np.isclose(row["loss"], row["lm_loss"] + 0.1 * row["mtp_loss"] + row["aux_loss"]
                                            + row["z_loss"], rtol=1e-5)
