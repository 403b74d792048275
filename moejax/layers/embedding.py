"""Token embedding and the output head (vocab sharded over tp), both padded to
`padded_vocab_size` rows; the head masks the padded logits so they are never predicted.
With tied weights (`model.untie_embeddings_and_output_weights=False`) the head is the
embedding table: `Embedding.attend` gives its logits and `Embedding.loss` its loss.

A head either gives logits or, for training, the weighted cross-entropy of its output
(`loss`; fused with the head by default, model.cross_entropy_loss_fusion)."""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.cross_entropy import head_logits, linear_cross_entropy


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
  return jnp.sum(weights_BS * optax.softmax_cross_entropy_with_integer_labels(_logits(x_BSH, w_HV, spec), labels_BS))


class Embedding(nn.Module):
  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.embedding = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("vocab", "embed")), (s.padded_vocab_size, s.hidden_size),
        s.params_dtype)

  def __call__(self, tokens_BS: jax.Array) -> jax.Array:
    x_BSH = jnp.take(self.embedding.astype(self.spec.dtype), tokens_BS, axis=0)
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
