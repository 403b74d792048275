"""GPTModel: document resets at end-of-document tokens, loss masking, layer segments."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from moejax.config import AttentionSpec, DocumentSpec, ModelSpec, MoESpec, RouterSpec
from moejax.data.gpt_dataset import ltor_position_ids_and_segments
from moejax.models.decoder import layer_segments, relayout
from moejax.models.gpt import GPTModel, document_positions_and_segments
from moejax.train.loss import loss_fn

EOD = 7
SPEC = ModelSpec(hidden_size=32, num_layers=2, ffn_hidden_size=64, vocab_size=32, dtype="float32", init_method_std=0.2,
                 attention=AttentionSpec(num_attention_heads=4, num_query_groups=2, kv_channels=8),
                 moe=MoESpec(num_experts=4, ffn_hidden_size=16, layer_freq=(0, 1), router=RouterSpec(router_topk=2)),
                 documents=DocumentSpec(eod=EOD))


def test_document_ids_match_megatron_semantics():
  """Against the NumPy version that tests/data checks against megatron-core's datasets."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 10, size=(6, 40))
  pos, seg = document_positions_and_segments(jnp.asarray(tokens), EOD)
  for row in range(6):
    want_pos, want_seg = ltor_position_ids_and_segments(tokens[row], EOD, True, True)
    np.testing.assert_array_equal(pos[row], want_pos)
    np.testing.assert_array_equal(seg[row], want_seg)


def test_reset_masks_isolate_documents():
  """With both resets, each document of a packed row gets the logits it gets alone."""
  spec = SPEC.replace(reset_position_ids=True, reset_attention_mask=True)
  rng = np.random.default_rng(1)
  doc_a = np.append(rng.integers(8, 32, 9), EOD)
  doc_b = rng.integers(8, 32, 6)
  row = jnp.asarray(np.concatenate([doc_a, doc_b]))[None]
  model = GPTModel(spec)
  params = jax.jit(model.init)(jax.random.key(0), row)
  packed, _ = model.apply(params, row)
  alone_a, _ = model.apply(params, jnp.asarray(doc_a)[None])
  alone_b, _ = model.apply(params, jnp.asarray(doc_b)[None])
  np.testing.assert_allclose(packed[0, :10], alone_a[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(packed[0, 10:], alone_b[0], rtol=1e-5, atol=1e-5)
  # Without the resets, the second document sees the first.
  plain, _ = GPTModel(SPEC).apply(params, row)
  assert not np.allclose(plain[0, 10:], alone_b[0], atol=1e-3)


def test_eod_mask_loss_skips_positions_whose_input_is_eod():
  spec = SPEC.replace(eod_mask_loss=True)
  tokens = jnp.asarray(np.random.default_rng(2).integers(0, 10, size=(3, 17)))
  params = jax.jit(GPTModel(spec).init)(jax.random.key(0), tokens[:, :-1])["params"]
  loss, (metrics, _) = loss_fn(GPTModel(spec), params, tokens)
  logits, _ = GPTModel(spec).apply({"params": params}, tokens[:, :-1])
  ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))
  keep = np.asarray(tokens[:, :-1] != EOD)
  assert 0 < keep.sum() < keep.size
  np.testing.assert_allclose(metrics["lm_loss"], ce[keep].mean(), rtol=1e-6)


def test_layer_segments_cover_the_pattern_with_few_scans():
  assert layer_segments((True,) * 32) == [((True,), 32)]
  assert layer_segments((False,) * 3 + (True,) * 58) == [((False,), 3), ((True,), 58)]
  assert layer_segments((True, False) * 16) == [((True, False), 16)]
  for pattern in [(True, True, False, True, False, False, True), (False,)]:
    segs = layer_segments(pattern)
    assert sum((kinds * r for kinds, r in segs), ()) == pattern


@pytest.mark.slow
def test_unrolled_layer_loop_equals_the_scan():
  """model.scan_unroll: the same params (stacked), loss and gradients, with the layer loop run 2
  layers per iteration or not at all (0: one forward and one backward while loop fewer)."""
  spec = SPEC.replace(num_layers=4, layer_freq=1)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 32, size=(2, 17)))
  params = jax.jit(GPTModel(spec).init)(jax.random.key(0), tokens[:, :-1])["params"]

  def run(unroll):
    model = GPTModel(spec.replace(scan_unroll=unroll))
    grad = jax.jit(jax.value_and_grad(lambda p: loss_fn(model, p, tokens)[0]))
    return grad(params), grad.lower(params).as_text().count("stablehlo.while")

  (loss, grads), loops = run(1)
  for unroll in (2, 0):
    (loss_u, grads_u), loops_u = run(unroll)
    np.testing.assert_allclose(loss_u, loss, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_u, grads)
    assert loops_u == (loops if unroll == 2 else loops - 2)


@pytest.mark.slow
def test_per_layer_params_equal_the_scanned_stacks():
  """model.scan_layers=False: each layer its own params (decoder/layer_k: the scanned stacks'
  slices, `relayout`), the same loss, per-layer statistics and gradients, and no stack of
  layers anywhere (no concatenation of the layers' gradients); the same again with full or
  module-level selective recompute, scanned or not (the expert bias and its counts included)."""
  spec = SPEC.replace(num_layers=5, layer_freq=(0, 1, 1, 0, 1), router_score_function="sigmoid",
                      router_enable_expert_bias=True)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 32, size=(2, 17)))
  variables = nn.unbox(jax.jit(GPTModel(spec).init)(jax.random.key(0), tokens[:, :-1]))
  per_layer = GPTModel(spec.replace(scan_layers=False))
  unstack = lambda tree: {**tree, "decoder": relayout(tree["decoder"], spec.moe_pattern, False)}  # noqa: E731
  flat = {c: unstack(v) for c, v in variables.items()}
  boxed = jax.jit(per_layer.init)(jax.random.key(0), tokens[:, :-1])
  assert jax.tree.map(jnp.shape, flat) == jax.tree.map(jnp.shape, nn.unbox(boxed))
  names = nn.get_partition_spec(boxed)["params"]["decoder"]["layer_2"]["moe"]["experts"]["w1"]
  assert tuple(names) == ("expert", "expert_embed", "expert_mlp")  # the stacks' names without "layers"
  assert set(flat["params"]["decoder"]) == {"final_norm"} | {f"layer_{k}" for k in range(5)}

  def run(model, params, moe_state):
    fn = lambda p: loss_fn(model, p, tokens, moe_state)  # noqa: E731
    lowered = jax.jit(jax.value_and_grad(fn, has_aux=True)).lower(params)
    (loss, (metrics, _)), grads = lowered.compile()(params)
    return loss, metrics["tokens_per_expert"], grads, lowered.as_text()

  loss, counts, grads, hlo_scanned = run(GPTModel(spec), variables["params"], variables["moe_state"])
  loss_l, counts_l, grads_l, hlo = run(per_layer, flat["params"], flat["moe_state"])
  np.testing.assert_allclose(loss_l, loss, rtol=1e-6)
  np.testing.assert_array_equal(counts_l, counts)  # [MoE layers, E] in layer order
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_l, unstack(grads))
  stacked_w1 = re.compile(r"tensor<\d+x4x32x32xf32>")  # w1 is [E=4, H=32, 2F=32] per layer
  assert stacked_w1.search(hlo_scanned) and not stacked_w1.search(hlo)
  for recompute in (dict(recompute_granularity="full"),  # each layer rematerialized
                    dict(recompute_granularity="selective", recompute_modules=("layernorm", "mlp", "moe"))):
    loss_r, counts_r, grads_r, _ = run(GPTModel(per_layer.spec.replace(**recompute)), flat["params"], flat["moe_state"])
    loss_s, counts_s, grads_s, _ = run(GPTModel(spec.replace(**recompute)), variables["params"], variables["moe_state"])
    for lo, co, gr in ((loss_r, counts_r, grads_r), (loss_s, counts_s, unstack(grads_s))):
      np.testing.assert_allclose(lo, loss, rtol=1e-6)
      np.testing.assert_array_equal(co, counts)
      # fp32, summed in another order where XLA fuses the recomputation differently
      jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), gr, grads_l)
  for c, v in variables.items():  # and back: the stacks again, bit for bit
    back = relayout(flat[c]["decoder"], spec.moe_pattern, True)
    jax.tree.map(np.testing.assert_array_equal, back, v["decoder"])
