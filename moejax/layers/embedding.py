"""Token embedding and the untied output head (vocab sharded over tp), both padded to
`padded_vocab_size` rows; the head masks the padded logits so they are never predicted.

The head either gives logits or, for training, the weighted cross-entropy of its output
(`OutputHead.loss`; fused with the head by default, model.cross_entropy_loss_fusion)."""
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.cross_entropy import linear_cross_entropy


class Embedding(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, tokens_BS: jax.Array) -> jax.Array:
    s = self.spec
    table_VH = self.param("embedding", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("vocab", "embed")), (s.padded_vocab_size, s.hidden_size), s.params_dtype)
    x_BSH = jnp.take(table_VH.astype(s.dtype), tokens_BS, axis=0)
    return nn.with_logical_constraint(x_BSH, ("batch", "seq", "embed"))


class OutputHead(nn.Module):
  spec: ModelSpec

  def setup(self):
    s = self.spec
    self.kernel = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("embed", "vocab")), (s.hidden_size, s.padded_vocab_size), s.params_dtype)

  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    """fp32 logits [B, S, V_padded] (padded columns at the lowest float)."""
    s = self.spec
    logits_BSV = jnp.einsum("bsh,hv->bsv", x_BSH, self.kernel.astype(s.dtype), preferred_element_type=jnp.float32)
    if s.padded_vocab_size != s.vocab_size:
      real_V = jnp.arange(s.padded_vocab_size) < s.vocab_size
      logits_BSV = jnp.where(real_V, logits_BSV, jnp.finfo(logits_BSV.dtype).min)
    return nn.with_logical_constraint(logits_BSV, ("batch", "attn_seq", "vocab"))

  def loss(self, x_BSH: jax.Array, labels_BS: jax.Array, weights_BS: jax.Array) -> jax.Array:
    """Σ weights · cross-entropy of the head's output at the labels, in fp32."""
    s = self.spec
    if s.cross_entropy_loss_fusion:
      x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
      return linear_cross_entropy(x_BSH, self.kernel.astype(s.dtype), labels_BS, weights_BS, s.vocab_size)
    return jnp.sum(weights_BS * optax.softmax_cross_entropy_with_integer_labels(self(x_BSH), labels_BS))
