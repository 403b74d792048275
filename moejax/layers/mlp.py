"""SwiGLU MLP for dense layers (FFN dimension sharded over tp)."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.memory import tag


class MLP(nn.Module):
  spec: ModelSpec
  ffn_hidden_size: int

  @nn.compact
  def __call__(self, x_BSH: jax.Array) -> jax.Array:
    s = self.spec
    H, F = s.hidden_size, self.ffn_hidden_size

    def w(name, shape, axes, std=s.init_method_std):
      return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(std), axes), shape,
                        s.params_dtype).astype(s.dtype)

    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
    gate_BSF = tag(jnp.einsum("bsh,hf->bsf", x_BSH, w("gate", (H, F), ("embed", "mlp"))), "mlp_act")
    up_BSF = tag(jnp.einsum("bsh,hf->bsf", x_BSH, w("up", (H, F), ("embed", "mlp"))), "mlp_act")
    act_BSF = nn.with_logical_constraint(jax.nn.silu(gate_BSF) * up_BSF, ("batch", "attn_seq", "mlp"))
    out_BSH = jnp.einsum("bsf,fh->bsh", act_BSF, w("down", (F, H), ("mlp", "embed"), s.output_layer_init_std))
    return nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
