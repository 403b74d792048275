"""Dense layers against plain NumPy: RMSNorm, rotary embeddings, causal GQA attention, SwiGLU MLP,
embedding and output head."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from moejax.config import AttentionSpec, ModelSpec
from moejax.layers.attention import Attention
from moejax.layers.embedding import Embedding, OutputHead
from moejax.layers.mlp import MLP
from moejax.layers.norms import RMSNorm
from moejax.layers.rotary import apply_rotary

SPEC = ModelSpec(hidden_size=16, vocab_size=11, dtype="float32", init_method_std=0.3,
                 attention=AttentionSpec(num_attention_heads=4, num_query_groups=2, rotary_base=100.0))
B, S, H = 2, 7, 16


def _x(seed=0, shape=(B, S, H)):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _rotate(x_BSND, pos_BS, base):
  """Rotate-half RoPE written out per frequency pair (Megatron / HF Llama layout)."""
  D = x_BSND.shape[-1]
  out = np.empty_like(x_BSND, dtype=np.float64)
  for i in range(D // 2):
    theta = pos_BS[..., None] * base ** (-2.0 * i / D)
    a, b = x_BSND[..., i], x_BSND[..., i + D // 2]
    out[..., i] = a * np.cos(theta) - b * np.sin(theta)
    out[..., i + D // 2] = b * np.cos(theta) + a * np.sin(theta)
  return out


def test_rmsnorm():
  x = _x()
  params = {"params": {"scale": np.linspace(0.5, 1.5, H, dtype=np.float32)}}
  got = RMSNorm(1e-5).apply(params, jnp.asarray(x))
  want = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-5) * params["params"]["scale"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rotary_is_the_pairwise_rotation_and_keeps_norms():
  x = _x(1, (B, S, 3, 8))
  pos = np.tile(np.arange(S), (B, 1)) + np.array([[0], [5]])
  got = np.asarray(apply_rotary(jnp.asarray(x), jnp.asarray(pos), 100.0))
  np.testing.assert_allclose(got, _rotate(x, pos, 100.0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)


def _rotate_part(x_BSND, pos_BS, base, rotary_dim):
  """RoPE on the first rotary_dim channels, frequencies over rotary_dim (Megatron's --rotary-percent,
  HF's partial_rotary_factor); the rest unchanged."""
  return np.concatenate([_rotate(x_BSND[..., :rotary_dim], pos_BS, base), x_BSND[..., rotary_dim:]], axis=-1)


@pytest.mark.parametrize("rotary_percent", [1.0, 0.5])
def test_attention_is_causal_gqa_with_rotary(rotary_percent):
  x = _x(2)
  pos = np.tile(np.arange(S), (B, 1))
  spec = dataclasses.replace(SPEC, attention=dataclasses.replace(SPEC.attention, rotary_percent=rotary_percent))
  mod = Attention(spec)
  params = nn.unbox(mod.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(pos)))
  got = np.asarray(mod.apply(params, jnp.asarray(x), jnp.asarray(pos)))
  p = {k: np.asarray(v, np.float64) for k, v in params["params"].items()}
  rd = int(spec.head_dim * rotary_percent)
  q = _rotate_part(np.einsum("bsh,hnd->bsnd", x, p["q"]), pos, 100.0, rd)
  k = _rotate_part(np.einsum("bsh,hkd->bskd", x, p["k"]), pos, 100.0, rd)
  v = np.einsum("bsh,hkd->bskd", x, p["v"])
  k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)        # 4 query heads share 2 KV heads
  scores = np.einsum("bqnd,bknd->bnqk", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(np.tril(np.ones((S, S), bool)), scores, -np.inf)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  want = np.einsum("bsnd,ndh->bsh", np.einsum("bnqk,bknd->bqnd", w, v), p["o"])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_swiglu_mlp():
  x = _x(3)
  mod = MLP(SPEC, 24)
  params = nn.unbox(mod.init(jax.random.key(1), jnp.asarray(x)))["params"]
  got = mod.apply({"params": params}, jnp.asarray(x))
  g, u, d = (np.asarray(params[k], np.float64) for k in ("gate", "up", "down"))
  gate = x @ g
  want = (gate / (1 + np.exp(-gate)) * (x @ u)) @ d
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_embedding_and_output_head_pad_the_vocabulary():
  tokens = np.array([[0, 3, 10], [7, 7, 1]])
  emb = nn.unbox(Embedding(SPEC).init(jax.random.key(2), jnp.asarray(tokens)))
  x = Embedding(SPEC).apply(emb, jnp.asarray(tokens))
  np.testing.assert_array_equal(x, np.asarray(emb["params"]["embedding"])[tokens])
  head = nn.unbox(OutputHead(SPEC).init(jax.random.key(3), x))
  logits = OutputHead(SPEC).apply(head, x)
  assert logits.dtype == jnp.float32
  assert emb["params"]["embedding"].shape == (128, H) and logits.shape[-1] == 128   # 11 rows padded to 128
  want = np.asarray(x) @ np.asarray(head["params"]["kernel"])
  np.testing.assert_allclose(logits[..., :11], want[..., :11], rtol=1e-5, atol=1e-5)
  assert (np.asarray(logits[..., 11:]) == np.finfo(np.float32).min).all()   # padded rows: never predicted


MESHES = {  # name: (axes of a 2x2x2 mesh, sequence parallelism, the axes a shard_map makes manual)
    "dp_cp_tp": (("dp", "cp", "tp"), False, ()),
    "dp_cp_tp_sp": (("dp", "cp", "tp"), True, ()),
    "pp_cp_tp_sp": (("pp", "cp", "tp"), True, ("pp",)),
    "pp_dp_cp": (("pp", "dp", "cp"), False, ("pp",)),
    "pp_dp_tp": (("pp", "dp", "tp"), False, ("pp",)),
}


def _value_and_grad_on_mesh(name, loss, params, leaf):
  """jit(value_and_grad(loss))(params) under a MESHES mesh and its logical-axis rules, inside a
  shard_map over its manual axes (as the pipeline runs a stage); the gradient of param `leaf`
  sharded over tp and dp there (rows over dp, as the distributed optimizer places them)."""
  axes, sequence_parallel, manual = MESHES[name]
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), axes)
  has = lambda a: a if a in axes else None  # noqa: E731
  rules = (("batch", has("dp")), ("attn_seq", has("cp")), ("vocab", has("tp")), ("embed", None),
           ("seq", tuple(a for a in ("cp", "tp") if a in axes and (a == "cp" or sequence_parallel)) or None))
  rows = P(tuple(a for a in ("tp", "dp") if a in axes) or None, None)

  def step(p):
    value, grad = jax.value_and_grad(loss)(p)
    return value, jax.lax.with_sharding_constraint(grad["params"][leaf], rows)

  if manual:
    step = jax.shard_map(step, in_specs=P(), out_specs=P(), axis_names=set(manual), check_vma=False)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    return jax.jit(step)(params)


@pytest.mark.parametrize("name", ["dp_cp_tp", "dp_cp_tp_sp", "pp_cp_tp_sp", "pp_dp_cp"])
def test_embedding_under_a_mesh_is_the_lookup_and_its_gradient(name):
  """Under a mesh (vocab over tp, tokens over dp and cp, the output over cp+tp with sequence
  parallelism) the vocab-parallel lookup gives the table's rows, and its gradient is the
  scatter-add of the output's: also inside a shard_map manual over pp (the pipeline), with the
  gradient sharded over dp as the distributed optimizer places it. There XLA 0.12.1's own
  partitioning of the gather's gradient aborts the process."""
  Bm, Sm = 4, 8
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (Bm, Sm)))
  weight = jnp.asarray(_x(4, (Bm, Sm, H)))  # a loss that tells every position apart
  params = nn.unbox(Embedding(SPEC).init(jax.random.key(2), tokens))
  value, grad = _value_and_grad_on_mesh(
      name, lambda p: jnp.sum(Embedding(SPEC).apply(p, tokens) ** 2 * weight), params, "embedding")
  table = np.asarray(params["params"]["embedding"])
  x = table[np.asarray(tokens)].astype(np.float64)
  np.testing.assert_allclose(value, np.sum(x ** 2 * np.asarray(weight)), rtol=1e-5)
  want = np.zeros(table.shape)
  np.add.at(want, np.asarray(tokens), 2 * x * np.asarray(weight))
  np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dp_cp_tp", "pp_dp_tp"])
def test_unfused_head_loss_under_a_mesh(name):
  """The output head's loss without the fused cross-entropy (model.cross_entropy_loss_fusion=False)
  with the vocab over tp: Σ weights · (logsumexp − the label's logit), and its gradient, also in
  a pp-manual shard_map, where the gradient of a gather at the labels aborts XLA 0.12.1."""
  spec = dataclasses.replace(SPEC, cross_entropy_loss_fusion=False)
  Bm, Sm = 4, 8
  rng = np.random.default_rng(5)
  x = jnp.asarray(_x(6, (Bm, Sm, H)))
  labels, weights = jnp.asarray(rng.integers(0, 11, (Bm, Sm))), jnp.asarray(rng.random((Bm, Sm)), jnp.float32)
  params = nn.unbox(OutputHead(spec).init(jax.random.key(3), x))
  value, grad = _value_and_grad_on_mesh(
      name, lambda p: OutputHead(spec).apply(p, x, labels, weights, method="loss"), params, "kernel")
  w = np.asarray(params["params"]["kernel"], np.float64)
  logits = (np.asarray(x, np.float64) @ w)[..., :11]  # the 11 real columns of 128
  lse = np.log(np.exp(logits).sum(-1))
  p_BSV = np.exp(logits - lse[..., None])
  np.testing.assert_allclose(value, np.sum(np.asarray(weights) * (lse - np.take_along_axis(
      logits, np.asarray(labels)[..., None], -1)[..., 0])), rtol=1e-5)
  d_logits = (p_BSV - np.eye(11)[np.asarray(labels)]) * np.asarray(weights)[..., None]
  want = np.zeros(w.shape)
  want[:, :11] = np.einsum("bsh,bsv->hv", np.asarray(x, np.float64), d_logits)
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)
