"""Token embedding and the output head (vocab sharded over tp), both padded to
`padded_vocab_size` rows; the head masks the padded logits so they are never predicted.
With tied weights (`model.untie_embeddings_and_output_weights=False`) the head is the
embedding table: `Embedding.attend` gives its logits and `Embedding.loss` its loss.

A head either gives logits or, for training, the weighted cross-entropy of its output
(`loss`; fused with the head by default, model.cross_entropy_loss_fusion)."""
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from moejax.config import ModelSpec
from moejax.layers.cross_entropy import head_logits, linear_cross_entropy, vocab_parallel_lse_and_target
from moejax.layers.dropout import hidden_dropout
from moejax.parallel.sharding import current_mesh, dividing_axes


def _logits(x_BSH, w_HV, spec: ModelSpec):
  """Logits [B, S, V_padded] in fp32, as the head's GEMM rounds them to the compute dtype
  (`head_logits`; padded columns at the lowest float)."""
  logits_BSV = head_logits(x_BSH.astype(spec.dtype), w_HV.astype(spec.dtype))
  if spec.padded_vocab_size != spec.vocab_size:
    real_V = jnp.arange(spec.padded_vocab_size) < spec.vocab_size
    logits_BSV = jnp.where(real_V, logits_BSV, jnp.finfo(logits_BSV.dtype).min)
  return nn.with_logical_constraint(logits_BSV, ("batch", "attn_seq", "vocab"))


def _loss(x_BSH, w_HV, labels_BS, weights_BS, spec: ModelSpec):
  """Σ weights · cross-entropy of the head x·w at the labels, in fp32."""
  if spec.cross_entropy_loss_fusion:
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
    return linear_cross_entropy(x_BSH, w_HV.astype(spec.dtype), labels_BS, weights_BS, spec.vocab_size,
                                spec.cross_entropy_fusion_impl)
  lse_BS, target_BS = vocab_parallel_lse_and_target(_logits(x_BSH, w_HV, spec), labels_BS)
  return jnp.sum(weights_BS * (lse_BS - target_BS))


class _LookupLayout(NamedTuple):
  """Where the lookup's operands live: mesh axes of the table's rows (vocab), of the tokens'
  batch and sequence (attn_seq), and of the output's sequence (seq: attn_seq, plus vocab with
  sequence parallelism); the rows of one vocab shard and the table's dtype."""
  mesh: jax.sharding.AbstractMesh
  vocab: tuple[str, ...]
  batch: tuple[str, ...]
  attn_seq: tuple[str, ...]
  seq: tuple[str, ...]
  rows: int
  dtype: jnp.dtype

  def tokens(self):
    return P(self.batch or None, self.attn_seq or None)

  def out(self):
    return P(self.batch or None, self.seq or None, None)

  def local_rows(self, tokens):
    """Tokens as row numbers of this rank's vocab shard, with `rows` (out of range) for tokens
    of other ranks."""
    local = tokens - jax.lax.axis_index(self.vocab) * self.rows  # index 0 with no vocab axes
    return jnp.where((local >= 0) & (local < self.rows), local, self.rows)


def _vocab_parallel_lookup(table_VH: jax.Array, tokens_BS: jax.Array) -> jax.Array:
  """table[tokens], under a mesh as Megatron's VocabParallelEmbedding: each tp rank looks the
  tokens up in its own vocab rows (zeros for the other ranks' tokens), and the partial rows are
  summed over tp, reduce-scattered onto the sequence-parallel layout when `seq` includes tp.

  Written by hand (shard_maps with a custom gradient) because XLA 0.12.1's SPMD partitioner
  aborts (a failed check in ExpandDeviceGroupsWithIota) on the partitioned gather's gradient
  inside the pipeline's pp-manual region: a scatter-add into rows sharded over tp, or over dp
  where the distributed optimizer shards the gradient. The gradient is what XLA 0.12.0 built for
  it there: tokens and the output's gradient (in its dtype) all-gathered over the data and
  sequence axes, then a scatter-add of them all into this rank's rows, in fp32. That moves a
  micro-batch's B·S·H activations, not the V/tp·H table (Megatron all-reduces the table's
  gradient over dp instead, once a step)."""
  mesh = current_mesh()
  (V, _), (B, S) = table_VH.shape, tokens_BS.shape
  if mesh is not None:
    vocab = dividing_axes("vocab", V)
    layout = _LookupLayout(mesh, vocab, dividing_axes("batch", B), dividing_axes("attn_seq", S),
                           dividing_axes("seq", S), V // math.prod(mesh.shape[a] for a in vocab), table_VH.dtype)
    if layout.seq in (layout.attn_seq, layout.attn_seq + vocab):  # else a sequence not split as the rules say
      return _lookup(table_VH, tokens_BS, layout)
  return jnp.take(table_VH, tokens_BS, axis=0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _lookup(table_VH, tokens_BS, layout: _LookupLayout):
  def rows(table_vH, tokens_bs):
    local_bs = layout.local_rows(tokens_bs)
    x_bsH = jnp.take(table_vH, local_bs, axis=0, mode="fill", fill_value=0)
    if layout.seq == layout.attn_seq:  # (a psum over no vocab axes returns x)
      return jax.lax.psum(x_bsH, layout.vocab)
    return jax.lax.psum_scatter(x_bsH, layout.vocab, scatter_dimension=1, tiled=True)

  return jax.shard_map(rows, mesh=layout.mesh, in_specs=(P(layout.vocab or None, None), layout.tokens()),
                       out_specs=layout.out(), check_vma=False)(table_VH, tokens_BS)


def _lookup_fwd(table_VH, tokens_BS, layout):
  return _lookup(table_VH, tokens_BS, layout), tokens_BS


def _lookup_bwd(layout, tokens_BS, d_BSH):
  def gather(x, names, dim):  # no names: x itself
    return jax.lax.all_gather(x, names, axis=dim, tiled=True)

  def grad_rows(tokens_bs, d_bsH):
    local_BS = layout.local_rows(gather(gather(tokens_bs, layout.batch, 0), layout.attn_seq, 1))
    d_BSH = gather(gather(d_bsH, layout.batch, 0), layout.seq, 1)
    d_vH = jnp.zeros((layout.rows, d_BSH.shape[-1]), jnp.float32).at[local_BS].add(
        d_BSH.astype(jnp.float32), mode="drop")
    return d_vH.astype(layout.dtype)

  # every rank of a vocab shard gathers the same rows: the result is replicated over the others
  d_VH = jax.shard_map(grad_rows, mesh=layout.mesh, in_specs=(layout.tokens(), layout.out()),
                       out_specs=P(layout.vocab or None, None), check_vma=False)(tokens_BS, d_BSH)
  return d_VH, None


_lookup.defvjp(_lookup_fwd, _lookup_bwd)


class Embedding(nn.Module):
  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(s.embedding_init_method_std or s.init_method_std), ("vocab", "embed")),
        (s.padded_vocab_size, s.hidden_size), s.params_dtype)

  def __call__(self, tokens_BS: jax.Array) -> jax.Array:
    x_BSH = _vocab_parallel_lookup(self.embedding.astype(self.spec.dtype), tokens_BS)
    x_BSH = hidden_dropout(self, x_BSH, self.spec.hidden_dropout)  # Megatron's embedding dropout
    return nn.with_logical_constraint(x_BSH, ("batch", "seq", "embed"))

  def attend(self, x_BSH: jax.Array) -> jax.Array:
    """The tied output head's logits x · tableᵀ (fp32, rounded as `head_logits`)."""
    return _logits(x_BSH, self.embedding.T, self.spec)

  def loss(self, x_BSH: jax.Array, labels_BS: jax.Array, weights_BS: jax.Array) -> jax.Array:
    """The tied head's Σ weights · cross-entropy."""
    return _loss(x_BSH, self.embedding.T, labels_BS, weights_BS, self.spec)


class OutputHead(nn.Module):
  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("embed", "vocab")), (s.hidden_size, s.padded_vocab_size),
        s.params_dtype)

  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    return _logits(x_BSH, self.kernel, self.spec)

  def loss(self, x_BSH: jax.Array, labels_BS: jax.Array, weights_BS: jax.Array) -> jax.Array:
    """Σ weights · cross-entropy of the head's output at the labels, in fp32."""
    return _loss(x_BSH, self.kernel, labels_BS, weights_BS, self.spec)
