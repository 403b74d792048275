"""Token embedding and the untied output head (vocab sharded over tp), both padded to
`padded_vocab_size` rows; the head masks the padded logits so they are never predicted."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec


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

  @nn.compact
  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    s = self.spec
    w_HV = self.param("kernel", nn.with_logical_partitioning(
        nn.initializers.normal(s.init_method_std), ("embed", "vocab")), (s.hidden_size, s.padded_vocab_size), s.params_dtype)
    logits_BSV = jnp.einsum("bsh,hv->bsv", x_BSH, w_HV.astype(s.dtype), preferred_element_type=jnp.float32)
    if s.padded_vocab_size != s.vocab_size:
      real_V = jnp.arange(s.padded_vocab_size) < s.vocab_size
      logits_BSV = jnp.where(real_V, logits_BSV, jnp.finfo(logits_BSV.dtype).min)
    return nn.with_logical_constraint(logits_BSV, ("batch", "attn_seq", "vocab"))
