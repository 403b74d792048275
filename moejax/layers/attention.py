"""Grouped-query self-attention with rotary embeddings (heads sharded over tp)."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.memory import remat_fn, tag
from moejax.layers.rotary import apply_rotary
from moejax.parallel.context import context_parallel_attention, cp_size


def _impl(spec: ModelSpec) -> str:
  """`auto`: cuDNN flash attention on GPUs for 16-bit inputs it supports, XLA otherwise.

  (jax.nn.dot_product_attention's own default is always XLA.)
  """
  if spec.attention.attention_impl != "auto":
    return spec.attention.attention_impl
  cudnn_ok = spec.dtype in ("bfloat16", "float16") and spec.head_dim <= 128 and spec.head_dim % 8 == 0
  return "cudnn" if cudnn_ok and jax.default_backend() == "gpu" else "xla"


class Attention(nn.Module):
  spec: ModelSpec

  def _proj(self, name, shape, axes):
    s = self.spec
    return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(s.init_method_std), axes),
                      shape, s.params_dtype).astype(s.dtype)

  @nn.compact
  def __call__(self, x_BSH: jax.Array, positions_BS: jax.Array, segments_BS: jax.Array | None = None):
    """Causal attention; with `segments_BS` (document ids) a token sees only its own document."""
    s = self.spec
    H, D = s.hidden_size, s.head_dim
    N, K = s.attention.num_attention_heads, s.attention.num_query_groups
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
    q_BSND = jnp.einsum("bsh,hnd->bsnd", x_BSH, self._proj("q", (H, N, D), ("embed", "heads", "head_dim")))
    k_BSKD = jnp.einsum("bsh,hkd->bskd", x_BSH, self._proj("k", (H, K, D), ("embed", "kv_heads", "head_dim")))
    v_BSKD = jnp.einsum("bsh,hkd->bskd", x_BSH, self._proj("v", (H, K, D), ("embed", "kv_heads", "head_dim")))
    q_BSND = apply_rotary(q_BSND, positions_BS, s.attention.rotary_base)
    k_BSKD = apply_rotary(k_BSKD, positions_BS, s.attention.rotary_base)
    q_BSND = nn.with_logical_constraint(q_BSND, ("batch", "attn_seq", "heads", "head_dim"))
    k_BSKD = nn.with_logical_constraint(k_BSKD, ("batch", "attn_seq", "kv_heads", "head_dim"))
    v_BSKD = nn.with_logical_constraint(v_BSKD, ("batch", "attn_seq", "kv_heads", "head_dim"))
    q_BSND, k_BSKD, v_BSKD = (tag(t, "core_attn") for t in (q_BSND, k_BSKD, v_BSKD))
    if cp_size() > 1:  # the sequence is in cp's load-balanced order (moejax/parallel/context.py)
      core_attn = remat_fn(s, "core_attn", lambda q, k, v, seg: context_parallel_attention(
          q, k, v, seg, s.attention.cp_comm_type))
      o_BSND = core_attn(q_BSND, k_BSKD, v_BSKD, segments_BS)
    else:
      if segments_BS is None:
        mask, impl = None, _impl(s)
      else:  # document masks go through XLA (the cuDNN path here takes no arbitrary mask)
        mask, impl = segments_BS[:, None, :, None] == segments_BS[:, None, None, :], "xla"
      core_attn = remat_fn(s, "core_attn", lambda q, k, v, m: jax.nn.dot_product_attention(
          q, k, v, mask=m, is_causal=True, implementation=impl))
      o_BSND = core_attn(q_BSND, k_BSKD, v_BSKD, mask)
    o_BSND = tag(nn.with_logical_constraint(o_BSND, ("batch", "attn_seq", "heads", "head_dim")), "attn_proj")
    out_BSH = jnp.einsum("bsnd,ndh->bsh", o_BSND, self._proj("o", (N, D, H), ("heads", "head_dim", "embed")))
    return nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
