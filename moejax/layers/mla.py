"""Multi-head Latent Attention (DeepSeek-V2/V3; Megatron's MLASelfAttention), heads sharded over tp.

Legend: B batch, S positions, H hidden, N heads, R_q / R_kv the q / kv latent ranks,
Dn the no-position part of a q/k head, Dr its rotary part, Dv the value head dim.

  q  = W_q x                                   or  W_q_up RMSNorm(W_q_down x)     [N, Dn + Dr]
  c, k_r = W_kv_down x                         (latent [R_kv], shared rotary key [Dr])
  k_n, v = W_kv_up RMSNorm(c)                  [N, Dn], [N, Dv]
  k = [k_n, RoPE(k_r) broadcast over heads],   q = [q_n, RoPE(q_r)]
  out = W_o softmax(q k^T · scale) v,          scale = (Dn + Dr)^-1/2 · YaRN mscale^2

The latent norms use eps 1e-6, as DeepSeek's reference code and HF transformers (whatever
`model.norm_epsilon`).
"""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.layers.attention import Projections, attend
from moejax.layers.dropout import dropout_key
from moejax.layers.memory import remat_fn, tag
from moejax.layers.norms import RMSNorm
from moejax.layers.rotary import apply_rotary, softmax_scale_factor

LATENT_NORM_EPS = 1e-6


class MLASelfAttention(Projections):

  def _latent_norm(self, name):
    s = self.spec
    return RMSNorm(LATENT_NORM_EPS, s.dtype, s.params_dtype, axis=None, name=name)

  @nn.compact
  def __call__(self, x_BSH: jax.Array, positions_BS: jax.Array, segments_BS: jax.Array | None = None):
    s, a = self.spec, self.spec.attention
    m = a.mla
    H, N = s.hidden_size, a.num_attention_heads
    Dn, Dr, Dv = m.qk_head_dim, m.qk_pos_emb_head_dim, m.v_head_dim
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
    heads = ("heads", "head_dim")
    if m.q_lora_rank is None:
      q_BSNQ = jnp.einsum("bsh,hnq->bsnq", x_BSH, self.weight("q", (H, N, Dn + Dr), ("embed", *heads)))
      w_q_up = None
    else:
      q_BSNQ = jnp.einsum("bsh,hr->bsr", x_BSH, self.weight("q_down", (H, m.q_lora_rank), ("embed", None)))
      if a.add_qkv_bias:
        q_BSNQ = q_BSNQ + self.bias("q_down_bias", (m.q_lora_rank,), (None,))
      if a.qk_layernorm:
        q_BSNQ = self._latent_norm("q_norm")(q_BSNQ)  # the q latent [B, S, R_q]
      w_q_up = self.weight("q_up", (m.q_lora_rank, N, Dn + Dr), (None, *heads))
    ckv_BSC = jnp.einsum("bsh,hc->bsc", x_BSH, self.weight("kv_down", (H, m.kv_lora_rank + Dr), ("embed", None)))
    if a.add_qkv_bias:
      ckv_BSC = ckv_BSC + self.bias("kv_down_bias", (m.kv_lora_rank + Dr,), (None,))
    ckv_BSR, kr_BSD = ckv_BSC[..., :m.kv_lora_rank], ckv_BSC[..., m.kv_lora_rank:]
    if a.qk_layernorm:
      ckv_BSR = self._latent_norm("kv_norm")(ckv_BSR)
    w_kv_up = self.weight("kv_up", (m.kv_lora_rank, N, Dn + Dv), (None, *heads))

    def up(q_in, ckv_BSR, kr_BSD, w_q_up, w_kv_up, positions_BS):
      """q, k, v from the latents: recomputed in the backward pass with `mla_up_proj`."""
      q_BSNQ = q_in if w_q_up is None else jnp.einsum("bsr,rnq->bsnq", q_in, w_q_up)
      kv_BSNK = jnp.einsum("bsr,rnk->bsnk", ckv_BSR, w_kv_up)
      kn_BSND, v_BSNV = kv_BSNK[..., :Dn], kv_BSNK[..., Dn:]
      qn_BSND, qr_BSND = q_BSNQ[..., :Dn], q_BSNQ[..., Dn:]
      qr_BSND = apply_rotary(qr_BSND, positions_BS, a.rotary_base, a.rotary_scaling)
      kr_BS1D = apply_rotary(kr_BSD[:, :, None, :], positions_BS, a.rotary_base, a.rotary_scaling)
      q_BSNQ = jnp.concatenate([qn_BSND, qr_BSND], axis=-1)
      k_BSNQ = jnp.concatenate([kn_BSND, jnp.broadcast_to(kr_BS1D, (*kn_BSND.shape[:3], Dr))], axis=-1)
      return q_BSNQ, k_BSNQ, v_BSNV

    q_BSNQ, k_BSNQ, v_BSNV = remat_fn(s, "mla_up_proj", up)(q_BSNQ, ckv_BSR, kr_BSD, w_q_up, w_kv_up,
                                                                   positions_BS)
    q_BSNQ = nn.with_logical_constraint(q_BSNQ, ("batch", "attn_seq", *heads))
    k_BSNQ = nn.with_logical_constraint(k_BSNQ, ("batch", "attn_seq", *heads))
    v_BSNV = nn.with_logical_constraint(v_BSNV, ("batch", "attn_seq", *heads))
    scale = (Dn + Dr) ** -0.5 * softmax_scale_factor(a.rotary_scaling)
    self.record_max_logits(q_BSNQ, k_BSNQ, segments_BS, scale)
    o_BSNV = attend(q_BSNQ, k_BSNQ, v_BSNV, segments_BS, s, scale, dropout_key(self, s.attention.attention_dropout))
    o_BSNV = tag(nn.with_logical_constraint(o_BSNV, ("batch", "attn_seq", *heads)), "attn_proj")
    out_BSH = jnp.einsum("bsnv,nvh->bsh", o_BSNV, self.weight("o", (N, Dv, H), (*heads, "embed"),
                                                                 s.output_layer_init_std))
    if a.attention_output_bias:
      out_BSH = out_BSH + self.bias("o_bias", (H,), ("embed",))
    return nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
