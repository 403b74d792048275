"""Grouped-query self-attention with rotary embeddings (heads sharded over tp), optional QKV and
output biases (Qwen2, Qwen3) and per-head QK-norm (Qwen3); `attend` is the attention core MLA
shares (moejax/layers/mla.py)."""
import jax
import jax.numpy as jnp
from flax import linen as nn

from moejax.config import ModelSpec
from moejax.layers.dropout import dropout_key
from moejax.layers.memory import remat_fn, tag
from moejax.layers.norms import RMSNorm
from moejax.layers.qk_clip import COLLECTION, MaxAttentionLogits, max_attention_logits
from moejax.layers.rotary import apply_rotary
from moejax.parallel.context import context_parallel_attention, cp_size, load_balanced_order


def attention_impl(spec: ModelSpec) -> str:
  """`auto`: cuDNN flash attention on GPUs for 16-bit inputs whose head dim it takes, XLA otherwise.

  Head dims up to 128, and MLA's 192 (q/k; v is padded to it: REFERENCE.md §5 measured cuDNN there).
  (jax.nn.dot_product_attention's own default is always XLA.)
  """
  if spec.attention.attention_impl != "auto":
    return spec.attention.attention_impl
  return "cudnn" if cudnn_takes(spec) and jax.default_backend() == "gpu" else "xla"


def cudnn_takes(spec: ModelSpec) -> bool:
  """Whether `auto` sends this model's attention to cuDNN on a GPU: 16-bit, head dims it takes."""
  d = max(spec.qk_dim, spec.v_dim)
  limit = 256 if spec.attention.mla.multi_latent_attention else 128
  return spec.dtype in ("bfloat16", "float16") and d <= limit and d % 8 == 0


def attend(q_BSND, k_BSKD, v_BSKE, segments_BS, spec: ModelSpec, scale: float | None = None, dropout_key=None):
  """Causal softmax attention [B, S, N, E]; with `segments_BS` (document ids) a token sees only
  its own document. Under context parallelism the sequence is in cp's load-balanced order
  (moejax/parallel/context.py). q, k and v are named `core_attn` for offloading, and the core is
  recomputed in the backward pass when `train.recompute_modules` has core_attn (with the same
  dropout: its key is an input). With a `dropout_key`, model.attention_dropout on the probabilities
  (`_dropout_attention`).

  `jax.nn.dot_product_attention` (JAX 0.11) needs one head dim for q, k and v: when v's differs
  (MLA: 128 vs 192) the smaller side is zero-padded (exact: padded v columns give zero outputs,
  padded q/k columns add zero to the scores) and the output sliced back to v's dim.
  """
  Dqk, Dv = q_BSND.shape[-1], v_BSKE.shape[-1]
  scale = Dqk ** -0.5 if scale is None else scale
  q_BSND, k_BSKD, v_BSKE = (tag(t, "core_attn") for t in (q_BSND, k_BSKD, v_BSKE))
  if cp_size() > 1:
    core = remat_fn(spec, "core_attn", lambda q, k, v, seg: context_parallel_attention(
        q, k, v, seg, spec.attention.cp_comm_type, scale))
    return core(q_BSND, k_BSKD, v_BSKE, segments_BS)
  pad = lambda a, n: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, n)])  # noqa: E731
  if Dv < Dqk:
    v_BSKE = pad(v_BSKE, Dqk - Dv)
  elif Dv > Dqk:
    q_BSND, k_BSKD = pad(q_BSND, Dv - Dqk), pad(k_BSKD, Dv - Dqk)
  if segments_BS is None:
    mask, impl = None, attention_impl(spec)
  else:  # document masks go through XLA (the cuDNN path here takes no arbitrary mask)
    mask, impl = segments_BS[:, None, :, None] == segments_BS[:, None, None, :], "xla"
  if dropout_key is not None:
    rate = spec.attention.attention_dropout
    core = remat_fn(spec, "core_attn", lambda q, k, v, m, key: _dropout_attention(q, k, v, m, scale, rate, key))
    return core(q_BSND, k_BSKD, v_BSKE, mask, dropout_key)[..., :Dv]
  core = remat_fn(spec, "core_attn", lambda q, k, v, m: jax.nn.dot_product_attention(
      q, k, v, mask=m, is_causal=True, scale=scale, implementation=impl)[..., :Dv])
  return core(q_BSND, k_BSKD, v_BSKE, mask)


def _dropout_attention(q_BSND, k_BSKD, v_BSKE, mask_B1SS, scale: float, rate: float, key) -> jax.Array:
  """Causal softmax attention with dropout on the probabilities (each zeroed with probability `rate`, the
  rest divided by 1 - rate: Megatron's attention dropout), written out in XLA with fp32 logits and
  softmax, the [S, S] probabilities whole: jax.nn.dot_product_attention takes no dropout."""
  B, S, N, D = q_BSND.shape
  K = k_BSKD.shape[2]
  q_BSKGD = q_BSND.reshape(B, S, K, N // K, D)
  logits = jnp.einsum("bqkgd,bskd->bkgqs", q_BSKGD, k_BSKD, preferred_element_type=jnp.float32) * scale
  see = jnp.tril(jnp.ones((S, S), bool))[None, None, None]
  if mask_B1SS is not None:
    see = see & mask_B1SS[:, :, None]
  probs = jax.nn.softmax(jnp.where(see, logits, -jnp.inf), axis=-1)
  keep = jax.random.bernoulli(key, 1.0 - rate, probs.shape)
  probs = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(v_BSKE.dtype)
  return jnp.einsum("bkgqs,bskd->bqkgd", probs, v_BSKE).reshape(B, S, N, -1)


class Projections(nn.Module):
  """Shared helpers of the attention modules: weights and biases in the compute dtype."""
  spec: ModelSpec

  def weight(self, name, shape, axes, std: float | None = None):
    """A projection in the compute dtype, ~ N(0, std or model.init_method_std)."""
    s = self.spec
    return self.param(name, nn.with_logical_partitioning(nn.initializers.normal(std or s.init_method_std), axes),
                      shape, s.params_dtype).astype(s.dtype)

  def bias(self, name, shape, axes):
    s = self.spec
    return self.param(name, nn.with_logical_partitioning(nn.initializers.zeros, axes), shape,
                      s.params_dtype).astype(s.dtype)

  def norm(self, name, axis):
    s = self.spec
    return RMSNorm(s.norm_epsilon, s.dtype, s.params_dtype, axis=axis, name=name)

  def record_max_logits(self, q_BSND, k_BSKD, segments_BS, scale: float):
    """With QK-clip or its logging on, this step's largest attention logit per head, kept in the
    step state (moejax/layers/qk_clip.py)."""
    a = self.spec.attention
    if not (a.qk_clip or a.log_max_attention_logit):
      return
    seen = self.variable(COLLECTION, "max_attention_logits", MaxAttentionLogits.zeros, q_BSND.shape[2])
    if self.is_mutable_collection(COLLECTION) and not self.is_initializing():
      cp, S = cp_size(), q_BSND.shape[1]
      positions = load_balanced_order(S, cp) if cp > 1 else None  # the sequence's order under cp
      seen.value = seen.value.see(max_attention_logits(q_BSND, k_BSKD, segments_BS, scale, positions))


class Attention(Projections):

  @nn.compact
  def __call__(self, x_BSH: jax.Array, positions_BS: jax.Array, segments_BS: jax.Array | None = None):
    """Causal attention; with `segments_BS` (document ids) a token sees only its own document."""
    s, a = self.spec, self.spec.attention
    H, D = s.hidden_size, s.head_dim
    N, K = a.num_attention_heads, a.num_query_groups
    x_BSH = nn.with_logical_constraint(x_BSH, ("batch", "attn_seq", "embed"))
    q_BSND = jnp.einsum("bsh,hnd->bsnd", x_BSH, self.weight("q", (H, N, D), ("embed", "heads", "head_dim")))
    k_BSKD = jnp.einsum("bsh,hkd->bskd", x_BSH, self.weight("k", (H, K, D), ("embed", "kv_heads", "head_dim")))
    v_BSKD = jnp.einsum("bsh,hkd->bskd", x_BSH, self.weight("v", (H, K, D), ("embed", "kv_heads", "head_dim")))
    if a.add_qkv_bias:
      q_BSND = q_BSND + self.bias("q_bias", (N, D), ("heads", "head_dim"))
      k_BSKD = k_BSKD + self.bias("k_bias", (K, D), ("kv_heads", "head_dim"))
      v_BSKD = v_BSKD + self.bias("v_bias", (K, D), ("kv_heads", "head_dim"))
    if a.qk_layernorm:
      q_BSND = self.norm("q_norm", "head_dim")(q_BSND)
      k_BSKD = self.norm("k_norm", "head_dim")(k_BSKD)
    q_BSND = apply_rotary(q_BSND, positions_BS, a.rotary_base, a.rotary_scaling, s.rotary_dim)
    k_BSKD = apply_rotary(k_BSKD, positions_BS, a.rotary_base, a.rotary_scaling, s.rotary_dim)
    q_BSND = nn.with_logical_constraint(q_BSND, ("batch", "attn_seq", "heads", "head_dim"))
    k_BSKD = nn.with_logical_constraint(k_BSKD, ("batch", "attn_seq", "kv_heads", "head_dim"))
    v_BSKD = nn.with_logical_constraint(v_BSKD, ("batch", "attn_seq", "kv_heads", "head_dim"))
    self.record_max_logits(q_BSND, k_BSKD, segments_BS, D ** -0.5)
    o_BSND = attend(q_BSND, k_BSKD, v_BSKD, segments_BS, s, dropout_key=dropout_key(self, a.attention_dropout))
    o_BSND = tag(nn.with_logical_constraint(o_BSND, ("batch", "attn_seq", "heads", "head_dim")), "attn_proj")
    out_BSH = jnp.einsum("bsnd,ndh->bsh", o_BSND, self.weight("o", (N, D, H), ("heads", "head_dim", "embed"),
                                                                   s.output_layer_init_std))
    if a.attention_output_bias:
      out_BSH = out_BSH + self.bias("o_bias", (H,), ("embed",))
    return nn.with_logical_constraint(out_BSH, ("batch", "seq", "embed"))
