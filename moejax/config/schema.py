"""The config schema: one frozen spec per concern, its fields the keys with their defaults.

Keys follow Megatron-LM flags without the section prefix (`--moe-router-topk` is
`moe.router_topk`, `--train-iters` is `train.train_iters`); README has the full table.
`ModelSpec` nests the specs the Flax modules read; the other sections are read from the
config by the training code.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Literal

from moejax.config.spec import Spec

frozen = dataclasses.dataclass(frozen=True)

LoadBalancingType = Literal["aux_loss", "seq_aux_loss", "global_aux_loss", "sinkhorn", "none"]
GroupedGemmImpl = Literal["auto", "pallas", "tiled", "xla", "tokamax"]
CrossEntropyImpl = Literal["auto", "pallas", "xla"]


def padded_vocab_size(vocab_size: int, divisible_by: int) -> int:
  """The vocabulary rounded up to a multiple of `model.make_vocab_size_divisible_by`."""
  return math.ceil(vocab_size / divisible_by) * divisible_by


def _not_positive(section: str, spec, keys) -> list[str]:
  return [f"{section}.{k}={getattr(spec, k)!r} must be a positive integer" for k in keys
          if not isinstance(getattr(spec, k), int) or getattr(spec, k) < 1]


# ------------------------------------------------------------------------------ the model
@frozen
class RotaryScalingSpec(Spec, section="model"):
  """YaRN scaling of the rotary embeddings (Megatron's MLA YaRN keys; DeepSeek-V2/V3 use it).

  rope: plain RoPE. yarn: frequencies blended between extrapolation and interpolation by
  `rotary_scaling_factor` over [beta_slow, beta_fast] rotations of `original_max_position_embeddings`,
  cos/sin scaled by mscale(factor, mscale) / mscale(factor, mscale_all_dim) (or
  `rotary_attention_factor` when given), and MLA's softmax scale by mscale(factor, mscale_all_dim)^2.
  """
  rope_type: Literal["rope", "yarn"] = "rope"
  rotary_scaling_factor: float = 1.0
  original_max_position_embeddings: int = 4096
  beta_fast: float = 32.0
  beta_slow: float = 1.0
  mscale: float = 1.0
  mscale_all_dim: float = 0.0
  rotary_attention_factor: float | None = None  # HF's yarn attention_factor; None = from mscale / mscale_all_dim

  def problems(self):
    bad = super().problems()
    if self.rope_type == "yarn" and not self.rotary_scaling_factor > 0:
      bad.append(f"model.rotary_scaling_factor={self.rotary_scaling_factor} must be > 0 with model.rope_type='yarn'")
    if self.rope_type == "yarn":
      bad += _not_positive("model", self, ("original_max_position_embeddings",))
    return bad


@frozen
class MLASpec(Spec, section="model"):
  """Multi-head Latent Attention (DeepSeek-V2/V3): queries through an optional low-rank
  bottleneck, keys and values from one shared latent, RoPE on a separate per-head slice of
  q and one shared slice of k."""
  multi_latent_attention: bool = False
  q_lora_rank: int | None = None             # None: q projected directly from the hidden state
  kv_lora_rank: int = 512
  qk_head_dim: int = 128                     # the no-position part of a q/k head
  qk_pos_emb_head_dim: int = 64              # the rotary part of a q/k head
  v_head_dim: int = 128

  def problems(self):
    bad = super().problems()
    if self.multi_latent_attention:
      bad += _not_positive("model", self, ("kv_lora_rank", "qk_head_dim", "qk_pos_emb_head_dim", "v_head_dim"))
      if self.q_lora_rank is not None:
        bad += _not_positive("model", self, ("q_lora_rank",))
      if not bad and self.qk_pos_emb_head_dim % 2:
        bad.append(f"model.qk_pos_emb_head_dim={self.qk_pos_emb_head_dim} must be even (rotary pairs)")
    return bad


@frozen
class AttentionSpec(Spec, section="model"):
  """Self-attention: grouped-query (optionally with QKV bias and QK-norm) or MLA, rotary embeddings."""
  num_attention_heads: int = 4
  num_query_groups: int = 4                  # KV heads (GQA); == heads is plain MHA
  kv_channels: int | None = None             # head dim; None = hidden_size / heads
  rotary_base: float = 10000.0
  # Megatron's --rotary-percent (HF partial_rotary_factor): RoPE on the first int(head_dim * rotary_percent)
  # channels of each q/k head, the rest unrotated (GLM-4.5: 0.5); MLA has its own rotary part
  rotary_percent: float = 1.0
  attention_impl: Literal["auto", "xla", "cudnn"] = "auto"
  add_qkv_bias: bool = False                 # bias on the projections from the hidden state (Qwen2; MLA: q/kv down)
  attention_output_bias: bool = False        # bias on the output projection (HF attention_bias of Qwen3/DeepSeek)
  qk_layernorm: bool = False                 # per-head RMSNorm of q and k before RoPE (Qwen3); MLA: the latent norms
  rotary_scaling: RotaryScalingSpec = RotaryScalingSpec()
  mla: MLASpec = MLASpec()
  # context parallelism (parallel.cp > 1): keys/values around a ring of permutes, or one all-gather
  cp_comm_type: Literal["p2p", "allgather"] = "p2p"
  # Megatron's QK-clip (MuonClip, --qk-clip): after each optimizer step, heads whose largest attention
  # logit passed qk_clip_threshold get their q weights times eta^alpha and k weights times eta^(1-alpha),
  # eta = threshold / that logit (moejax/layers/qk_clip.py); log_max_attention_logit (on with qk_clip)
  # logs the step's largest logit. Each costs one more q·k product per layer, without gradient.
  qk_clip: bool = False
  qk_clip_alpha: float = 0.5
  qk_clip_threshold: float = 100.0
  log_max_attention_logit: bool = False
  # Megatron's --attention-dropout on the attention probabilities in training (its default is 0.1, moejax's 0);
  # above 0 the core attention runs in XLA (softmax written out: cuDNN's path here takes no dropout)
  attention_dropout: float = 0.0

  def problems(self):
    bad = super().problems() + _not_positive("model", self, ("num_attention_heads", "num_query_groups"))
    if not 0 <= self.attention_dropout < 1:
      bad.append(f"model.attention_dropout={self.attention_dropout} must be in [0, 1) (0 turns it off)")
    if self.kv_channels is not None:
      bad += _not_positive("model", self, ("kv_channels",))
    if not self.rotary_base > 0:
      bad.append(f"model.rotary_base={self.rotary_base} must be > 0 (RoPE's theta, e.g. 10000)")
    if not 0 <= self.qk_clip_alpha <= 1:
      bad.append(f"model.qk_clip_alpha={self.qk_clip_alpha} must be in [0, 1] (the query's share of the clip)")
    if not self.qk_clip_threshold > 0:
      bad.append(f"model.qk_clip_threshold={self.qk_clip_threshold} must be > 0 (the largest attention logit kept)")
    if not bad and self.num_attention_heads % self.num_query_groups:
      bad.append(f"model.num_attention_heads={self.num_attention_heads} is not divisible by "
                 f"model.num_query_groups={self.num_query_groups}: choose a divisor of the head count")
    return bad


@frozen
class RouterSpec(Spec, section="moe"):
  """TopKRouter: scoring, expert selection, capacity dropping and the balancing losses."""
  router_topk: int = 2
  # aux_loss | seq_aux_loss | global_aux_loss | sinkhorn | none, or a list with a list of coeffs
  router_load_balancing_type: LoadBalancingType | tuple[LoadBalancingType, ...] = "aux_loss"
  aux_loss_coeff: float | tuple[float, ...] = 0.0
  z_loss_coeff: float = 0.0
  router_score_function: Literal["softmax", "sigmoid"] = "softmax"
  router_pre_softmax: bool = False
  router_topk_scaling_factor: float | None = None
  router_num_groups: int | None = None
  router_group_topk: int | None = None
  # group score: sum of its top K/group_topk scores (Megatron), of its top 2 (DeepSeek-V3's code, HF)
  # or its best score (DeepSeek-V2)
  router_group_scoring: Literal["sum_topk", "sum_top2", "max"] = "sum_topk"
  # divide the top-k probs by their sum (HF's norm_topk_prob); None: Megatron's rule (sigmoid with
  # K > 1 normalised, pre-softmax not; post-softmax is normalised by construction)
  router_norm_topk_prob: bool | None = None
  router_dtype: Literal["fp32", "fp64"] = "fp32"
  router_enable_expert_bias: bool = False    # aux-loss-free balancing (DeepSeek-V3); needs sigmoid
  router_bias_update_rate: float = 1e-3
  input_jitter_eps: float | None = None
  router_force_load_balancing: bool = False  # benchmark: random logits spread tokens evenly
  expert_capacity_factor: float | None = None  # None: dropless
  token_drop_policy: Literal["probs", "position"] = "probs"
  pad_expert_input_to_capacity: bool = False

  def problems(self):
    """Megatron's TransformerConfig checks of the router and load-balancing keys."""
    problems = super().problems()
    types, coeffs = self.router_load_balancing_type, self.aux_loss_coeff
    lb_types = typing.get_args(LoadBalancingType)
    if isinstance(types, tuple):
      if not types or any(t not in lb_types for t in types):
        problems.append(f"moe.router_load_balancing_type={list(types)!r}: every entry must be one of {lb_types}")
      if not isinstance(coeffs, tuple) or len(coeffs) != len(types):
        problems.append(f"moe.aux_loss_coeff={coeffs!r} must be a list of {len(types)} numbers, one per entry "
                        f"of moe.router_load_balancing_type={list(types)!r}")
    elif types not in lb_types:
      problems.append(f"moe.router_load_balancing_type={types!r} is not one of {lb_types} (or a list of them)")
    elif isinstance(coeffs, tuple):
      problems.append(f"moe.aux_loss_coeff={list(coeffs)!r} is a list but moe.router_load_balancing_type="
                      f"{types!r} is one type: give one number, or a list of types")
    flat_types = types if isinstance(types, tuple) else (types,)
    flat_coeffs = coeffs if isinstance(coeffs, tuple) else (coeffs,)
    if any(not isinstance(c, (int, float)) or c < 0 for c in flat_coeffs):
      problems.append(f"moe.aux_loss_coeff={coeffs!r} must be non-negative number(s)")
    elif "sinkhorn" in flat_types and any(flat_coeffs):
      problems.append("moe.router_load_balancing_type='sinkhorn' does not use an aux loss: set moe.aux_loss_coeff=0")
    if (self.router_norm_topk_prob is False and self.router_score_function == "softmax"
        and not self.router_pre_softmax):
      problems.append("moe.router_norm_topk_prob=False needs moe.router_pre_softmax=True or sigmoid scores "
                      "(softmax after top-k is normalised by construction)")
    if self.router_enable_expert_bias and self.router_score_function != "sigmoid":
      problems.append("moe.router_enable_expert_bias=True needs moe.router_score_function='sigmoid' (as in Megatron)")
    if (self.router_topk == 1 and self.router_score_function == "softmax" and not self.router_pre_softmax
        and "sinkhorn" not in flat_types):
      problems.append("moe.router_topk=1 with softmax after top-k gives the router no gradient: "
                      "set moe.router_pre_softmax=True")
    if self.expert_capacity_factor is not None:
      if self.expert_capacity_factor <= 0:
        problems.append(f"moe.expert_capacity_factor={self.expert_capacity_factor} must be > 0 (or None: dropless)")
      if "sinkhorn" in flat_types:
        problems.append("moe.expert_capacity_factor works only with aux_loss, seq_aux_loss, global_aux_loss "
                        "or none load balancing, not sinkhorn")
    elif self.pad_expert_input_to_capacity:
      problems.append("moe.pad_expert_input_to_capacity=True needs moe.expert_capacity_factor to be set")
    if self.router_topk_scaling_factor is not None and not self.router_topk_scaling_factor > 0:
      problems.append(f"moe.router_topk_scaling_factor={self.router_topk_scaling_factor} must be > 0 "
                      "(or None: no scaling)")
    if not self.router_bias_update_rate >= 0:
      problems.append(f"moe.router_bias_update_rate={self.router_bias_update_rate} must be >= 0 "
                      "(the expert bias moves towards balance by this much per step)")
    if self.input_jitter_eps is not None and not 0 < self.input_jitter_eps < 1:
      problems.append(f"moe.input_jitter_eps={self.input_jitter_eps} must be in (0, 1) or None")
    if self.router_dtype == "fp64":
      import jax  # local: the schema stays light
      if not jax.config.jax_enable_x64:
        problems.append("moe.router_dtype='fp64' needs 64-bit JAX: set JAX_ENABLE_X64=1 "
                        "(or jax.config.update('jax_enable_x64', True)) or use 'fp32'")
    return problems


@frozen
class DispatchSpec(Spec, section="moe"):
  """Token dispatcher (benchmarks/RESULTS.md: "MoE layer / dispatch")."""
  token_dispatcher_type: Literal["allgather", "alltoall"] = "allgather"
  token_exchange: Literal["all_to_all", "ragged_all_to_all"] = "all_to_all"  # the alltoall exchange primitive
  # alltoall buffer rows per rank pair = factor * T*K/ep; None = worst case; overflow -> allgather path
  exchange_capacity_factor: float | None = None

  def problems(self):
    bad = super().problems()
    ecf = self.exchange_capacity_factor
    if ecf is not None and not ecf >= 1.0:
      bad.append(f"moe.exchange_capacity_factor={ecf} must be >= 1.0 (or None for the worst-case buffer)")
    return bad


@frozen
class MoESpec(Spec, section="moe"):
  """Mixture-of-experts layers: experts, shared experts, which layers are MoE."""
  num_experts: int | None = None             # None: a dense model
  ffn_hidden_size: int | None = None         # expert FFN; None = model.ffn_hidden_size
  shared_expert_intermediate_size: int | None = None
  layer_freq: int | tuple[int, ...] = 1      # every Nth layer is MoE, or a 0/1 per layer
  shared_expert_gate: bool = False           # Qwen2-MoE: shared expert output scaled by sigmoid(x @ w_gate)
  shared_expert_overlap: bool = True         # shared experts independent of the exchange so XLA can overlap them
  apply_probs_on_input: bool = False         # top-1 (Llama 4): the prob scales the expert's input, not its activation
  grouped_gemm_impl: GroupedGemmImpl = "auto"
  # start from a dense checkpoint (checkpoint.load_params): each expert a copy of the dense MLP, or a
  # 1/granularity slice of it (moejax/moe/upcycling.py; Megatron's --moe-use-upcycling)
  use_upcycling: bool = False
  upcycling_granularity: int = 1
  router: RouterSpec = RouterSpec()
  dispatch: DispatchSpec = DispatchSpec()

  def problems(self):
    problems = super().problems()
    E, K = self.num_experts, self.router.router_topk
    if E is None:
      return problems
    if E < 1:
      return problems + [f"moe.num_experts={E} must be positive (or None for a dense model)"]
    if not 1 <= K <= E:
      problems.append(f"moe.router_topk={K} must be between 1 and moe.num_experts={E}")
    if self.ffn_hidden_size is not None:
      problems += _not_positive("moe", self, ("ffn_hidden_size",))
    shared = self.shared_expert_intermediate_size
    if shared is not None and (not isinstance(shared, int) or shared < 0):
      problems.append(f"moe.shared_expert_intermediate_size={shared!r} must be a positive integer "
                      "(or None/0: no shared experts)")
    if self.apply_probs_on_input and K != 1:
      problems.append(f"moe.apply_probs_on_input=True needs moe.router_topk=1, not {K} (as in Megatron)")
    if self.shared_expert_gate and not self.shared_expert_intermediate_size:
      problems.append("moe.shared_expert_gate=True needs moe.shared_expert_intermediate_size to be set")
    freq = self.layer_freq
    if isinstance(freq, int):
      if freq < 1:
        problems.append(f"moe.layer_freq={freq} must be >= 1")
    elif not isinstance(freq, tuple):
      problems.append(f"moe.layer_freq={freq!r} must be an int or a list of 0/1")
    if self.use_upcycling and (not isinstance(self.upcycling_granularity, int) or self.upcycling_granularity < 1
                               or E % self.upcycling_granularity):
      problems.append(f"moe.upcycling_granularity={self.upcycling_granularity!r} must be a positive divisor of "
                      f"moe.num_experts={E} (num_experts = copies of the dense MLP x granularity)")
    if self.router.router_num_groups is not None:
      G, g = self.router.router_num_groups, self.router.router_group_topk
      if E % G:
        problems.append(f"moe.num_experts={E} is not divisible by moe.router_num_groups={G}")
      if g is None or not 1 <= g <= G:
        problems.append(f"moe.router_group_topk={g} must be set between 1 and moe.router_num_groups={G}")
      elif self.router.router_group_scoring == "sum_topk" and K % g:
        problems.append(f"moe.router_topk={K} is not divisible by moe.router_group_topk={g}")
      elif not E % G and K > g * (E // G):
        problems.append(f"moe.router_topk={K} is more than the {g * (E // G)} experts of moe.router_group_topk={g} "
                        f"groups of {E // G}")
      elif self.router.router_group_scoring == "sum_top2" and E // G < 2:
        problems.append(f"moe.router_group_scoring='sum_top2' needs groups of at least 2 experts, not "
                        f"moe.num_experts={E} / moe.router_num_groups={G}")
    elif self.router.router_group_topk is not None:
      problems.append(f"moe.router_group_topk={self.router.router_group_topk} needs moe.router_num_groups "
                      "(group-limited routing keeps the best router_group_topk of router_num_groups groups)")
    return problems


RecomputeModule = Literal["core_attn", "moe_act", "layernorm", "mla_up_proj", "mlp", "moe", "shared_experts"]
OffloadModule = Literal["attn_norm", "qkv_linear", "core_attn", "attn_proj", "mlp_norm", "expert_fc1", "moe_act"]


@frozen
class RecomputeSpec(Spec, section="train"):
  """Activation memory (moejax/layers/memory.py): recomputation in the backward pass, offloading to host.

  `full` recomputes each scanned superblock from its input; `selective` recomputes the listed
  submodules (Megatron's `--recompute-modules`). `offload_modules` keeps the inputs of those
  submodules in pinned host memory between the forward and the backward pass (Megatron's
  fine-grained activation offloading)."""
  recompute_granularity: Literal["full", "selective"] | None = None
  recompute_modules: tuple[RecomputeModule, ...] = ("core_attn",)   # Megatron's default; read when selective
  offload_modules: tuple[OffloadModule, ...] = ()

  def problems(self):
    bad = super().problems()
    for key, lit in (("recompute_modules", RecomputeModule), ("offload_modules", OffloadModule)):
      value = getattr(self, key)
      wrong = [m for m in value if m not in typing.get_args(lit)] if isinstance(value, tuple) else [value]
      if wrong:
        bad.append(f"train.{key}={value!r}: {wrong} not among {typing.get_args(lit)} "
                   f"(a list of names: --config.train.{key}=\"('core_attn',)\")")
    if self.recompute_granularity == "full" and self.offload_modules:
      bad.append(f"train.offload_modules={list(self.offload_modules)} with train.recompute_granularity='full': "
                 "full recomputation keeps no activations to offload; use 'selective' or None")
    return bad


@frozen
class LossSpec(Spec, section="train"):
  """How the LM loss averages over tokens. Megatron's default: the mean over each micro-batch's loss
  tokens, averaged over the micro-batches; `calculate_per_token_loss` (Megatron's --calculate-per-token-loss):
  the sum over the step's loss tokens over their count, so a micro-batch with more loss tokens (fewer
  masked by data.eod_mask_loss) weighs more, and the MTP loss is divided by the same count."""
  calculate_per_token_loss: bool = False


@frozen
class FSDPSpec(Spec, section="parallel"):
  """Megatron-FSDP: parameters stored sharded over the data-parallel devices (edp for experts) and
  gathered layer by layer inside the scan (moejax/models/decoder.py reads it)."""
  fsdp: bool = False


@frozen
class DocumentSpec(Spec, section="data"):
  """Packed documents: end-of-document token and Megatron's per-document resets."""
  eod: int = 256                             # end-of-document token id (the byte tokenizer's by default)
  reset_position_ids: bool = False           # position ids restart after each eod token
  reset_attention_mask: bool = False         # tokens attend only within their own document
  eod_mask_loss: bool = False                # no loss at positions whose input token is eod


@frozen
class ModelSpec(Spec, section="model"):
  """Everything the Flax modules read, frozen and hashable.

  Built from a config by `model_spec(cfg)`, or directly when reusing one module in other code:
  `MoELayer(ModelSpec(hidden_size=512, moe=MoESpec(num_experts=8, ffn_hidden_size=1024)))`.
  """
  num_layers: int = 2
  hidden_size: int = 64
  ffn_hidden_size: int = 128                 # dense (non-MoE) layers
  vocab_size: int = 257
  # Megatron's --make-vocab-size-divisible-by: embedding and head rows are padded to a multiple
  # of it (not times tp as in Megatron, so checkpoints keep one shape across layouts); the
  # padded rows are never predicted (their logits are masked) and exports cut them off.
  make_vocab_size_divisible_by: int = 128
  norm_epsilon: float = 1e-5
  # weights ~ N(0, init_method_std); each layer's output projections (attention's, the MLPs' and the
  # experts' fc2) ~ N(0, output_layer_init_std), Megatron's scaled init; the embedding table
  # ~ N(0, embedding_init_method_std or init_method_std)
  init_method_std: float = 0.02
  embedding_init_method_std: float | None = None
  params_dtype: Literal["float32", "bfloat16"] = "float32"        # master weights
  dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # compute
  # the LM head and its cross-entropy in one chunked pass, no [tokens, vocab] logits (layers/cross_entropy.py)
  cross_entropy_loss_fusion: bool = True
  # its softmax passes in training: a Pallas Triton kernel (pallas; auto on a GPU) or XLA (xla)
  cross_entropy_fusion_impl: CrossEntropyImpl = "auto"
  # layers per iteration of the decoder's (or a pipeline stage's) layer loop (lax.scan's unroll);
  # 0 = all: no loop, so no [layers, ...] stacks of activations for the backward pass, at the cost
  # of a longer compile. Params stay stacked either way (same checkpoints)
  scan_unroll: int = 1
  # MaxText's scan_layers: False gives every decoder layer its own params (decoder/layer_{k}, no
  # leading layers axis) and runs them in a Python loop (scan_unroll then has nothing to unroll), so
  # no layer stack is sliced in the forward pass or concatenated from its layers' gradients in the
  # backward. Checkpoints hold the per-layer tree (hf-to-moejax --no-scan-layers); not with pp > 1
  scan_layers: bool = True
  # moejax default: separate embedding and output head (every family here); Megatron ties by default
  untie_embeddings_and_output_weights: bool = True
  mtp_num_layers: int = 0                    # Multi-Token Prediction depths (DeepSeek-V3: 1); 0 = the base model
  mtp_loss_scaling_factor: float = 0.1       # the MTP loss weight, shared over the depths (λ / D)
  # Megatron's --hidden-dropout in training: on the embedding's output and on each attention and MLP/MoE
  # output before its residual add (Megatron's bias-dropout-add); its default is 0.1, moejax's 0
  hidden_dropout: float = 0.0
  attention: AttentionSpec = AttentionSpec()
  moe: MoESpec = MoESpec()
  recompute: RecomputeSpec = RecomputeSpec()
  documents: DocumentSpec = DocumentSpec()
  loss: LossSpec = LossSpec()
  sharding: FSDPSpec = FSDPSpec()

  def problems(self):
    bad = super().problems() + _not_positive("model", self, ("num_layers", "hidden_size", "ffn_hidden_size",
                                                             "vocab_size", "make_vocab_size_divisible_by"))
    if bad:
      return bad
    a, d, freq = self.attention, self.documents, self.moe.layer_freq
    for key, ok, rule in (("norm_epsilon", self.norm_epsilon > 0, "> 0 (e.g. 1e-5)"),
                          ("init_method_std", self.init_method_std > 0, "> 0 (e.g. 0.02)"),
                          ("embedding_init_method_std", (self.embedding_init_method_std or 1) > 0,
                           "> 0 (or None: model.init_method_std)"),
                          ("mtp_loss_scaling_factor", self.mtp_loss_scaling_factor >= 0, ">= 0 (e.g. 0.1)"),
                          ("hidden_dropout", 0 <= self.hidden_dropout < 1, "in [0, 1) (0 turns it off)")):
      if not ok:
        bad.append(f"model.{key}={getattr(self, key)} must be {rule}")
    if ((d.reset_position_ids or d.reset_attention_mask or d.eod_mask_loss)
        and not 0 <= d.eod < self.vocab_size):
      bad.append(f"data.eod={d.eod} is outside model.vocab_size={self.vocab_size}: set data.eod to the "
                 "tokenizer's end-of-document id (needed by data.reset_* / data.eod_mask_loss)")
    if not isinstance(self.mtp_num_layers, int) or self.mtp_num_layers < 0:
      bad.append(f"model.mtp_num_layers={self.mtp_num_layers!r} must be an integer >= 0 (0 = no MTP)")
    if not isinstance(self.scan_unroll, int) or isinstance(self.scan_unroll, bool) or self.scan_unroll < 0:
      bad.append(f"model.scan_unroll={self.scan_unroll!r} must be an integer >= 0 (layers per loop iteration; "
                 "0 = all, no loop)")
    if (a.kv_channels is None and not a.mla.multi_latent_attention and a.num_attention_heads > 0
        and self.hidden_size % a.num_attention_heads):
      bad.append(f"model.hidden_size={self.hidden_size} is not divisible by model.num_attention_heads="
                 f"{a.num_attention_heads}: set model.kv_channels explicitly or change the head count")
    elif not a.mla.multi_latent_attention and self.head_dim > 0 and self.head_dim % 2:
      key = "model.kv_channels" if a.kv_channels is not None else "the head dim model.hidden_size/num_attention_heads"
      bad.append(f"{key}={self.head_dim} must be even: rotary embeddings turn pairs of channels")
    elif not 0 < a.rotary_percent <= 1:
      bad.append(f"model.rotary_percent={a.rotary_percent} must be in (0, 1] (the share of a head's channels RoPE turns)")
    elif a.rotary_percent != 1 and a.mla.multi_latent_attention:
      bad.append(f"model.rotary_percent={a.rotary_percent} does not apply to MLA, whose rotary part is "
                 "model.qk_pos_emb_head_dim: leave it at 1.0")
    elif self.head_dim > 0 and (self.rotary_dim % 2 or not self.rotary_dim):
      bad.append(f"model.rotary_percent={a.rotary_percent} of the head dim {self.head_dim} gives {self.rotary_dim} "
                 "rotary channels: it must be an even number > 0")
    m = self.moe
    if m.use_upcycling and m.num_experts is None:
      bad.append("moe.use_upcycling=True needs a MoE model: set moe.num_experts (and checkpoint.load_params "
                 "to the dense run or weights)")
    elif (m.use_upcycling and isinstance(m.upcycling_granularity, int) and m.upcycling_granularity > 0
          and self.moe_ffn_hidden_size * m.upcycling_granularity != self.ffn_hidden_size):
      bad.append(f"moe.use_upcycling=True with moe.upcycling_granularity={m.upcycling_granularity} needs "
                 f"moe.ffn_hidden_size = model.ffn_hidden_size / granularity = "
                 f"{self.ffn_hidden_size / m.upcycling_granularity:g}, not {self.moe_ffn_hidden_size}")
    elif m.use_upcycling and m.shared_expert_intermediate_size:
      bad.append("moe.use_upcycling=True does not build shared experts from the dense MLP: "
                 "unset moe.shared_expert_intermediate_size")
    r = self.recompute
    if (r.recompute_granularity == "selective" and "mla_up_proj" in r.recompute_modules
        and not self.attention.mla.multi_latent_attention):
      bad.append("train.recompute_modules has 'mla_up_proj' but this model has no multi-latent attention: remove it")
    if (self.moe.num_experts is not None and isinstance(freq, tuple)
        and (len(freq) != self.num_layers or any(v not in (0, 1) for v in freq))):
      bad.append(f"moe.layer_freq={list(freq)} must be a list of {self.num_layers} zeros and ones "
                 "(one per layer, 1 = MoE)")
    return bad

  @property
  def padded_vocab_size(self) -> int:
    return padded_vocab_size(self.vocab_size, self.make_vocab_size_divisible_by)

  @property
  def head_dim(self) -> int:
    a = self.attention
    return a.kv_channels if a.kv_channels is not None else self.hidden_size // a.num_attention_heads

  @property
  def rotary_dim(self) -> int:
    """The channels of a q/k head RoPE turns (Megatron and HF: int(head_dim * rotary_percent))."""
    return int(self.head_dim * self.attention.rotary_percent)

  @property
  def qk_dim(self) -> int:
    """Query/key head dim: head_dim, or MLA's no-position + rotary parts."""
    mla = self.attention.mla
    return mla.qk_head_dim + mla.qk_pos_emb_head_dim if mla.multi_latent_attention else self.head_dim

  @property
  def v_dim(self) -> int:
    mla = self.attention.mla
    return mla.v_head_dim if mla.multi_latent_attention else self.head_dim

  @property
  def output_layer_init_std(self) -> float:
    """Megatron's scaled init of the output projections: init_method_std / sqrt(2 · num_layers), so that
    the residual stream's variance at init does not grow with depth."""
    return self.init_method_std / math.sqrt(2 * self.num_layers)

  @property
  def moe_ffn_hidden_size(self) -> int:
    return self.moe.ffn_hidden_size if self.moe.ffn_hidden_size is not None else self.ffn_hidden_size

  @property
  def moe_pattern(self) -> tuple[bool, ...]:
    """Which layers are MoE, from `moe.layer_freq` (Megatron's --moe-layer-freq)."""
    if self.moe.num_experts is None:
      return (False,) * self.num_layers
    freq = self.moe.layer_freq
    if isinstance(freq, int):
      return tuple(i % freq == 0 for i in range(self.num_layers))
    return tuple(bool(v) for v in freq)


# ------------------------------------------------------------------------------ training
@frozen
class ParallelSpec(Spec, section="parallel"):
  """Megatron's parallel sizes; dp and edp are derived (moejax.parallel.mesh)."""
  tp: int = 1
  cp: int = 1
  pp: int = 1
  ep: int = 1
  etp: int | None = None                     # None = tp
  vpp: int | None = None                     # virtual pipeline stages per pp rank (interleaved schedule)
  dp: int = -1                               # -1: derived as devices / (tp*cp*pp)
  sequence_parallel: bool = False
  # pipeline stages (moejax/parallel/pipeline.py, docs/PIPELINE.md): Megatron's
  # --pipeline-model-parallel-layout string (e.g. "Et*3|(tt|)*29,m|L"), or the layers of the
  # first/last pp rank with the rest split evenly; none: an even split
  pipeline_layout: str | None = None
  decoder_first_pipeline_num_layers: int | None = None
  decoder_last_pipeline_num_layers: int | None = None
  pipeline_schedule: Literal["1f1b", "gpipe"] = "1f1b"

  def problems(self):
    bad = super().problems() + _not_positive("parallel", self, ("tp", "cp", "pp", "ep"))
    if self.etp is not None and (not isinstance(self.etp, int) or self.etp < 1):
      bad.append(f"parallel.etp={self.etp} must be a positive integer")
    return bad


@frozen
class DataSpec(Spec, section="data"):
  """Where the tokens come from."""
  source: Literal["pydoc", "synthetic", "indexed"] = "pydoc"  # bundled text | random | Megatron .bin/.idx
  seed: int = 1234
  # indexed: .bin/.idx prefixes, optionally weighted like Megatron's --data-path: ("0.3", "a", "0.7", "b")
  path: tuple[str, ...] = ()
  split: str = "969,30,1"                    # indexed: train,valid,test weights (Megatron's --split)
  cache_dir: str = ""                        # indexed: sample-index cache; "" = next to the data


@frozen
class OptimSpec(Spec, section="optim"):
  """AdamW (or Megatron's Muon on the hidden matrices) with warmup and decay."""
  # `muon`: Megatron's --optimizer muon: the layers' matrices (attention, MLPs, experts, router) by
  # orthogonalized momentum (moejax/train/muon.py), the embedding, output layer, norms and biases by AdamW
  optimizer: Literal["adam", "muon"] = "adam"
  lr: float = 3e-4
  min_lr: float = 3e-5
  weight_decay: float = 0.1
  # Megatron's weight-decay schedule: `linear` or `cosine` rise from start_weight_decay to
  # end_weight_decay over train_iters (None: weight_decay); `constant` keeps weight_decay
  weight_decay_incr_style: Literal["constant", "linear", "cosine"] = "constant"
  start_weight_decay: float | None = None
  end_weight_decay: float | None = None
  # Megatron's decoupled param group: the embedding and output layer's peak and final learning rate
  # (lr's warmup and decay; None = lr's group; decoupled_min_lr None = min_lr)
  decoupled_lr: float | None = None
  decoupled_min_lr: float | None = None
  adam_beta1: float = 0.9
  adam_beta2: float = 0.95
  adam_eps: float = 1e-8
  # Muon (Megatron's --muon-* arguments and defaults): EMA momentum (Nesterov optional), Newton-Schulz
  # iterations with these coefficients, computed in bf16 ("medium") or fp32 ("high": TF32 on GPUs,
  # "highest"); the update scaled by its matrix's shape (spectral: sqrt(max(out, in))) and the extra factor;
  # q, k and v orthogonalized apart (split_qkv); at tp/etp > 1 each rank's block apart (`blockwise`, Megatron's
  # default) or the whole matrix (`duplicated`, `distributed`: the same update, computed differently)
  muon_momentum: float = 0.95
  muon_use_nesterov: bool = False
  muon_num_ns_steps: int = 5
  muon_coefficient_type: Literal["simple", "quintic", "polar_express"] = "quintic"
  muon_fp32_matmul_prec: Literal["medium", "high", "highest"] = "medium"
  muon_scale_mode: Literal["spectral", "shape_scaling", "unit_rms_norm"] = "spectral"
  muon_extra_scale_factor: float = 1.0
  muon_split_qkv: bool = True
  muon_tp_mode: Literal["blockwise", "duplicated", "distributed"] = "blockwise"
  clip_grad: float = 1.0
  lr_warmup_iters: int = 0
  lr_warmup_samples: int = 0                 # with train.train_samples: Megatron's sample-based forms of
  lr_decay_samples: int | None = None        # lr_warmup_iters, lr_decay_iters (None = train_samples) and
  lr_wsd_decay_samples: int | None = None    # lr_wsd_decay_iters
  lr_warmup_init: float = 0.0                # the warmup's first learning rate
  lr_warmup_fraction: float | None = None    # warmup over this fraction of lr_decay_iters (not with lr_warmup_iters)
  # Megatron's styles (its default is linear); WSD: constant, then lr_wsd_decay_style over the
  # last lr_wsd_decay_iters of the decay
  lr_decay_style: Literal["constant", "linear", "cosine", "inverse-square-root", "WSD"] = "cosine"
  lr_decay_iters: int | None = None          # None = train_iters
  lr_wsd_decay_style: Literal["exponential", "linear", "cosine", "minus_sqrt"] = "exponential"
  lr_wsd_decay_iters: int | None = None
  # ZeRO-1: fp32 master params and Adam moments sharded over dp (expert ones over edp); no-op at dp=edp=1
  use_distributed_optimizer: bool = True
  # moments / main grads below fp32 (update math stays fp32); Megatron needs this flag for them too
  use_precision_aware_optimizer: bool = False
  main_grads_dtype: Literal["fp32", "bf16"] = "fp32"   # gradient accumulation over micro-batches
  exp_avg_dtype: Literal["fp32", "bf16"] = "fp32"      # Adam's first moment
  exp_avg_sq_dtype: Literal["fp32", "bf16"] = "fp32"   # Adam's second moment
  optimizer_cpu_offload: float = 0.0         # share of the optimizer state (by bytes) kept in pinned host memory

  def problems(self):
    bad = super().problems()
    low = [k for k in ("main_grads_dtype", "exp_avg_dtype", "exp_avg_sq_dtype") if getattr(self, k) != "fp32"]
    if low and not self.use_precision_aware_optimizer:
      bad.append(f"optim.{low[0]}={getattr(self, low[0])!r} needs optim.use_precision_aware_optimizer=True "
                 "(as in Megatron)")
    if not isinstance(self.optimizer_cpu_offload, (int, float)) or not 0 <= self.optimizer_cpu_offload <= 1:
      bad.append(f"optim.optimizer_cpu_offload={self.optimizer_cpu_offload!r} must be a fraction in [0, 1] "
                 "(the share of the optimizer state kept in host memory)")
    if not self.lr > 0:
      bad.append(f"optim.lr={self.lr} must be > 0 (a learning rate of e.g. 3e-4)")
    elif not 0 <= self.min_lr <= self.lr:
      bad.append(f"optim.min_lr={self.min_lr} must be between 0 and optim.lr={self.lr}")
    for k in ("weight_decay", "clip_grad", "lr_warmup_iters", "lr_warmup_samples"):
      if getattr(self, k) < 0:
        bad.append(f"optim.{k}={getattr(self, k)} must be >= 0 (0 turns it off)")
    for k in ("adam_beta1", "adam_beta2"):
      if not 0 <= getattr(self, k) < 1:
        bad.append(f"optim.{k}={getattr(self, k)} must be in [0, 1)")
    if not self.adam_eps > 0:
      bad.append(f"optim.adam_eps={self.adam_eps} must be > 0")
    if not 0 <= self.muon_momentum < 1:
      bad.append(f"optim.muon_momentum={self.muon_momentum} must be in [0, 1)")
    if self.muon_num_ns_steps < 1:
      bad.append(f"optim.muon_num_ns_steps={self.muon_num_ns_steps} must be >= 1 (Newton-Schulz iterations; "
                 "Megatron's default is 5)")
    if self.lr_decay_iters is not None and self.lr_decay_iters < 1:
      bad.append(f"optim.lr_decay_iters={self.lr_decay_iters} must be >= 1 (or None: train.train_iters)")
    if self.lr_decay_samples is not None and self.lr_decay_samples < 1:
      bad.append(f"optim.lr_decay_samples={self.lr_decay_samples} must be >= 1 (or None: train.train_samples)")
    if self.lr > 0 and not 0 <= self.lr_warmup_init <= self.lr:
      bad.append(f"optim.lr_warmup_init={self.lr_warmup_init} must be between 0 and optim.lr={self.lr}")
    if self.lr_warmup_fraction is not None and not (0 <= self.lr_warmup_fraction < 1 and self.lr_warmup_iters == 0):
      bad.append(f"optim.lr_warmup_fraction={self.lr_warmup_fraction} must be in [0, 1) with optim.lr_warmup_iters=0 "
                 "(give one of the two, as in Megatron)")
    if self.lr_decay_style == "WSD" and not max(self.lr_wsd_decay_iters or 0, self.lr_wsd_decay_samples or 0) >= 1:
      bad.append(f"optim.lr_decay_style='WSD' needs optim.lr_wsd_decay_iters >= 1 (the annealing steps at the end "
                 f"of the decay; lr_wsd_decay_samples with train.train_samples), not {self.lr_wsd_decay_iters}")
    return bad + self._weight_decay_problems() + self._decoupled_lr_problems()

  def _weight_decay_problems(self):
    start, end, style = self.start_weight_decay, self.end_weight_decay, self.weight_decay_incr_style
    if style == "constant":
      given = {"start_weight_decay": start, "end_weight_decay": end}
      return [f"optim.{k}={v} must equal optim.weight_decay={self.weight_decay} (or be None) with "
              "optim.weight_decay_incr_style='constant'; set 'linear' or 'cosine' for a schedule"
              for k, v in given.items() if v not in (None, self.weight_decay)]
    if style in ("linear", "cosine") and (start is None or end is None):
      return [f"optim.weight_decay_incr_style={style!r} needs optim.start_weight_decay and optim.end_weight_decay "
              f"(the schedule's first and last values), not {start} and {end}"]
    if style in ("linear", "cosine") and not 0 <= start <= end:
      return [f"optim.start_weight_decay={start} must be between 0 and optim.end_weight_decay={end} "
              "(Megatron's weight decay only rises)"]
    return []

  def _decoupled_lr_problems(self):
    lr, min_lr = self.decoupled_lr, self.decoupled_min_lr
    if lr is None:
      return [] if min_lr is None else [f"optim.decoupled_min_lr={min_lr} needs optim.decoupled_lr (the embedding "
                                        "and output layer's peak learning rate)"]
    if not lr > 0:
      return [f"optim.decoupled_lr={lr} must be > 0 (or None: the embedding and output layer take optim.lr)"]
    if min_lr is not None and not 0 <= min_lr <= lr:
      return [f"optim.decoupled_min_lr={min_lr} must be between 0 and optim.decoupled_lr={lr}"]
    return []


@frozen
class TrainSpec(Spec, section="train"):
  """Steps, batch sizes and the evaluation schedule."""
  train_iters: int | None = 100             # steps, or None with train_samples (sample-based training)
  train_samples: int | None = None           # Megatron's --train-samples: steps follow from the batch schedule
  micro_batch_size: int = 1                  # per data-parallel rank, as in Megatron
  global_batch_size: int = 8                 # the batch after any ramp-up
  # Megatron's batch-size ramp-up (moejax/data/batch_schedule.py; needs train_samples): (start, increment,
  # samples), --rampup-batch-size; or "TOKENS:BATCH ..." from a token count on, --step-batch-size-schedule
  rampup_batch_size: tuple[int, ...] | None = None
  step_batch_size_schedule: str | None = None
  seq_length: int = 128
  seed: int = 0
  log_interval: int = 10
  eval_interval: int = 0                     # evaluate on the validation split every N steps (0 = never)
  eval_iters: int = 10                       # global batches per evaluation
  # NaN/inf guard (Megatron's --check-for-nan-in-loss-and-grad): a step whose loss or gradient norm is
  # not finite leaves params, optimizer and MoE state unchanged; more than skip_nonfinite_steps
  # such steps in a row stop the run (non-zero exit), never saving a non-finite state
  check_for_nan_in_loss_and_grad: bool = True
  skip_nonfinite_steps: int = 3
  # stop early, saving a checkpoint, every process after the same step (moejax/train/stop.py; SIGTERM
  # and SIGINT do so too): after this many minutes of the run, or at a multiple of this many steps
  exit_duration_in_mins: float | None = None
  exit_interval: int | None = None

  def problems(self):
    counts = ("micro_batch_size", "global_batch_size", "seq_length", "log_interval")
    bad = super().problems() + _not_positive("train", self, counts + ("train_iters",) * (self.train_iters is not None))
    if not isinstance(self.skip_nonfinite_steps, int) or self.skip_nonfinite_steps < 0:
      bad.append(f"train.skip_nonfinite_steps={self.skip_nonfinite_steps!r} must be an integer >= 0 "
                 "(0: stop at the first non-finite step)")
    for k in ("exit_duration_in_mins", "exit_interval"):
      if getattr(self, k) is not None and not getattr(self, k) > 0:
        bad.append(f"train.{k}={getattr(self, k)} must be > 0 (or None: no such stop)")
    if not isinstance(self.eval_interval, int) or self.eval_interval < 0:
      bad.append(f"train.eval_interval={self.eval_interval!r} must be an integer >= 0 (0 = no evaluation)")
    elif self.eval_interval and (not isinstance(self.eval_iters, int) or self.eval_iters < 1):
      bad.append(f"train.eval_iters={self.eval_iters!r} must be a positive integer when train.eval_interval is set")
    return bad


@frozen
class CheckpointSpec(Spec, section="checkpoint"):
  save_interval: int = 100
  max_to_keep: int = 2
  async_save: bool = True
  # a new run (step 0, fresh optimizer) from the weights of DIR: a weights-only checkpoint (DIR/params),
  # a training workdir (its newest verified checkpoint) or one of its checkpoints/<step>; "" = none
  load_params: str = ""
  keep_interval: int | None = None           # also keep every checkpoint whose step is a multiple of this

  def problems(self):
    bad = super().problems() + [
        f"checkpoint.{k}={getattr(self, k)!r} must be a positive integer (steps between saves / checkpoints kept)"
        for k in ("save_interval", "max_to_keep") if not isinstance(getattr(self, k), int) or getattr(self, k) < 1]
    if self.keep_interval is not None and (not isinstance(self.keep_interval, int) or self.keep_interval < 1):
      bad.append(f"checkpoint.keep_interval={self.keep_interval!r} must be a positive integer (or None: keep "
                 "only the last checkpoint.max_to_keep)")
    return bad


@frozen
class LoggingSpec(Spec, section="logging"):
  tensorboard: bool = True
  peak_tflops_per_device: float = 0.0        # 0: detect (H100/H200: 989); unknown devices log mfu as null
  moe_per_layer: bool = False                # per-MoE-layer series (losses, load, drops) besides the summary
  # Megatron's --profile/--profile-step-start/--profile-step-end: a jax.profiler trace of the steps
  # in [start, end) (counted from 0, as Megatron's iteration) and the compiled step's HLO, in
  # WORKDIR/profile (TensorBoard's profile plugin / XProf; benchmarks/profile_breakdown.py)
  profile: bool = False
  profile_step_start: int = 10
  profile_step_end: int = 12
  # Megatron's --log-params-norm / --log-num-zeros-in-grad: metrics `params_norm` (L2 norm of the
  # master params after the update) and `num_zeros_in_grad` (exact zeros of the gradients the optimizer sees)
  log_params_norm: bool = False
  log_num_zeros_in_grad: bool = False

  def problems(self):
    bad = super().problems()
    if not self.peak_tflops_per_device >= 0:
      bad.append(f"logging.peak_tflops_per_device={self.peak_tflops_per_device} must be >= 0 "
                 "(0: detect from the device kind)")
    if self.profile and not (isinstance(self.profile_step_start, int) and isinstance(self.profile_step_end, int)
                             and 0 <= self.profile_step_start < self.profile_step_end):
      bad.append(f"logging.profile_step_start={self.profile_step_start!r} and logging.profile_step_end="
                 f"{self.profile_step_end!r} must be integers with 0 <= start < end (the steps traced)")
    return bad


def model_spec(cfg) -> ModelSpec:
  """The frozen model spec of a config."""
  return ModelSpec.from_config(cfg)
