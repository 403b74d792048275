"""Token embedding and the output head (vocab sharded over tp), both padded to
`padded_vocab_size` rows; the head masks the padded logits so they are never predicted.
With tied weights (`model.untie_embeddings_and_output_weights=False`) the head is
`Embedding.attend`: logits against the embedding table."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec


def _logits(x_BSH, w_HV, spec: ModelSpec):
  """fp32 logits with the padded vocabulary rows masked."""
  logits_BSV = jnp.einsum("bsh,hv->bsv", x_BSH, w_HV.astype(spec.dtype), preferred_element_type=jnp.float32)
  if spec.padded_vocab_size != spec.vocab_size:
    real_V = jnp.arange(spec.padded_vocab_size) < spec.vocab_size
    logits_BSV = jnp.where(real_V, logits_BSV, jnp.finfo(logits_BSV.dtype).min)
  return nn.with_logical_constraint(logits_BSV, ("batch", "attn_seq", "vocab"))


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
    """The tied output head: fp32 logits x · tableᵀ."""
    return _logits(x_BSH, self.embedding.T, self.spec)


class OutputHead(nn.Module):
  spec: ModelSpec

  @nn.compact
  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    s = self.spec
    w_HV = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("embed", "vocab")), (s.hidden_size, s.padded_vocab_size), s.params_dtype)
    return _logits(x_BSH, w_HV, s)
