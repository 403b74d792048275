"""Megatron-LM arguments → moejax config keys: the one table (README's "Megatron flags → config keys"
is checked against it by tests/tools/test_from_megatron.py), the arguments moejax has no key for
(each with its reason), and `convert`, which reads an argument list into config values.

FLAGS: flag → (config key, kind). Kinds: int, float, str; `True`/`False` for switches (the value
the key takes when the switch is given); `list` for several values (`--data-path a b`, `--recompute-modules
core_attn moe_act`); or a function of the flag's values and the arguments seen (flag → first value).
"""
from __future__ import annotations

import ast
import dataclasses
import operator

_LAYER_PATTERN_OPS = {ast.Add: operator.add, ast.Mult: operator.mul}


def layer_pattern(text: str):
  """`--moe-layer-freq`: an int, or Megatron's Python list expression ("[0]*3+[1]*58"), read with
  only list literals, integers, + and * allowed (Megatron evaluates it with eval)."""
  def ev(node):
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
      return node.value
    if isinstance(node, ast.List):
      return [ev(e) for e in node.elts]
    if isinstance(node, ast.BinOp) and type(node.op) in _LAYER_PATTERN_OPS:
      return _LAYER_PATTERN_OPS[type(node.op)](ev(node.left), ev(node.right))
    raise ValueError(f"--moe-layer-freq {text!r}: only integers, [lists], + and * are understood")
  value = ev(ast.parse(text.strip(), mode="eval").body)
  return value if isinstance(value, int) else tuple(value)


def _one_or_list(cast):
  """nargs='+' flags: one value as itself, several as a tuple (moejax's list form)."""
  return lambda v, _a: cast(v[0]) if len(v) == 1 else tuple(cast(x) for x in v)


def _grouped_gemm(_values, _args) -> str:
  return "auto"  # moejax's grouped GEMM is always on: `auto` picks the Pallas kernels on Hopper


def _vpp_from_layers_per_stage(values: list[str], args: dict) -> int | None:
  """Megatron: vpp = (num_layers / pp) / --num-layers-per-virtual-pipeline-stage; 1 means no
  virtual stages (moejax: None)."""
  per_rank = int(args.get("--num-layers", 0)) // int(args.get("--pipeline-model-parallel-size", 1))
  vpp = per_rank // int(values[0])
  return vpp if vpp > 1 else None


def _vpp(values: list[str], _args) -> int | None:
  return int(values[0]) if int(values[0]) > 1 else None


def _fsdp_given(args: dict) -> bool:
  return "--use-megatron-fsdp" in args or "--use-torch-fsdp2" in args


def _zero3(args: dict) -> bool:
  """Megatron's FSDP shards params, gradients and optimizer state (moejax's parallel.fsdp) only with its
  default --data-parallel-sharding-strategy optim_grads_params; `optim_grads` and `optim` shard what
  moejax's distributed optimizer shards, `no_shard` nothing."""
  return args.get("--data-parallel-sharding-strategy", "optim_grads_params") == "optim_grads_params"


# flag → (key, kind): model, MoE, parallel, optimizer, data, training and checkpoint arguments of
# Megatron-Core's MoE guide and of Megatron-LM's argument parser that moejax has a key for
FLAGS: dict[str, tuple[str, object]] = {
    # model
    "--num-layers": ("model.num_layers", int),
    "--hidden-size": ("model.hidden_size", int),
    "--ffn-hidden-size": ("model.ffn_hidden_size", int),
    "--num-attention-heads": ("model.num_attention_heads", int),
    "--num-query-groups": ("model.num_query_groups", int),
    "--kv-channels": ("model.kv_channels", int),
    "--vocab-size": ("model.vocab_size", int),
    "--rotary-base": ("model.rotary_base", float),
    "--rotary-percent": ("model.rotary_percent", float),
    "--qk-clip": ("model.qk_clip", True),
    "--qk-clip-alpha": ("model.qk_clip_alpha", float),
    "--qk-clip-threshold": ("model.qk_clip_threshold", float),
    "--log-max-attention-logit": ("model.log_max_attention_logit", True),
    "--norm-epsilon": ("model.norm_epsilon", float),
    "--cross-entropy-loss-fusion": ("model.cross_entropy_loss_fusion", True),
    "--add-qkv-bias": ("model.add_qkv_bias", True),
    "--qk-layernorm": ("model.qk_layernorm", True),
    "--untie-embeddings-and-output-weights": ("model.untie_embeddings_and_output_weights", True),
    "--multi-latent-attention": ("model.multi_latent_attention", True),
    "--q-lora-rank": ("model.q_lora_rank", int),
    "--kv-lora-rank": ("model.kv_lora_rank", int),
    "--qk-head-dim": ("model.qk_head_dim", int),
    "--qk-pos-emb-head-dim": ("model.qk_pos_emb_head_dim", int),
    "--v-head-dim": ("model.v_head_dim", int),
    "--rope-type": ("model.rope_type", str),
    "--rotary-scaling-factor": ("model.rotary_scaling_factor", float),
    "--original-max-position-embeddings": ("model.original_max_position_embeddings", int),
    "--beta-fast": ("model.beta_fast", float),
    "--beta-slow": ("model.beta_slow", float),
    "--mscale": ("model.mscale", float),
    "--mscale-all-dim": ("model.mscale_all_dim", float),
    "--mtp-num-layers": ("model.mtp_num_layers", int),
    "--mtp-loss-scaling-factor": ("model.mtp_loss_scaling_factor", float),
    "--make-vocab-size-divisible-by": ("model.make_vocab_size_divisible_by", int),
    "--init-method-std": ("model.init_method_std", float),
    "--embedding-init-method-std": ("model.embedding_init_method_std", float),
    "--bf16": ("model.dtype", lambda _v, _a: "bfloat16"),
    "--fp16": ("model.dtype", lambda _v, _a: "float16"),
    # MoE
    "--num-experts": ("moe.num_experts", int),
    "--moe-router-topk": ("moe.router_topk", int),
    "--moe-ffn-hidden-size": ("moe.ffn_hidden_size", int),
    "--moe-shared-expert-intermediate-size": ("moe.shared_expert_intermediate_size", int),
    "--moe-layer-freq": ("moe.layer_freq", lambda v, _a: layer_pattern(v[0])),
    "--moe-router-load-balancing-type": ("moe.router_load_balancing_type", _one_or_list(str)),
    "--moe-aux-loss-coeff": ("moe.aux_loss_coeff", _one_or_list(float)),
    "--moe-z-loss-coeff": ("moe.z_loss_coeff", float),
    "--moe-router-score-function": ("moe.router_score_function", str),
    "--moe-router-pre-softmax": ("moe.router_pre_softmax", True),
    "--moe-router-topk-scaling-factor": ("moe.router_topk_scaling_factor", float),
    "--moe-router-num-groups": ("moe.router_num_groups", int),
    "--moe-router-group-topk": ("moe.router_group_topk", int),
    "--moe-router-dtype": ("moe.router_dtype", str),
    "--moe-router-enable-expert-bias": ("moe.router_enable_expert_bias", True),
    "--moe-router-bias-update-rate": ("moe.router_bias_update_rate", float),
    "--moe-input-jitter-eps": ("moe.input_jitter_eps", float),
    "--moe-router-force-load-balancing": ("moe.router_force_load_balancing", True),
    "--moe-expert-capacity-factor": ("moe.expert_capacity_factor", float),
    "--moe-token-drop-policy": ("moe.token_drop_policy", str),
    "--moe-pad-expert-input-to-capacity": ("moe.pad_expert_input_to_capacity", True),
    "--moe-per-layer-logging": ("logging.moe_per_layer", True),
    "--profile": ("logging.profile", True),
    "--profile-step-start": ("logging.profile_step_start", int),
    "--profile-step-end": ("logging.profile_step_end", int),
    "--log-params-norm": ("logging.log_params_norm", True),
    "--log-num-zeros-in-grad": ("logging.log_num_zeros_in_grad", True),
    "--moe-token-dispatcher-type": ("moe.token_dispatcher_type", str),
    "--moe-shared-expert-overlap": ("moe.shared_expert_overlap", True),
    "--moe-apply-probs-on-input": ("moe.apply_probs_on_input", True),
    "--moe-shared-expert-gate": ("moe.shared_expert_gate", True),
    "--moe-grouped-gemm": ("moe.grouped_gemm_impl", _grouped_gemm),
    "--moe-use-upcycling": ("moe.use_upcycling", True),
    "--moe-upcycling-granularity": ("moe.upcycling_granularity", int),
    # parallel
    "--tensor-model-parallel-size": ("parallel.tp", int),
    "--context-parallel-size": ("parallel.cp", int),
    "--cp-comm-type": ("model.cp_comm_type", str),
    "--pipeline-model-parallel-size": ("parallel.pp", int),
    "--expert-model-parallel-size": ("parallel.ep", int),
    "--expert-tensor-parallel-size": ("parallel.etp", int),
    "--sequence-parallel": ("parallel.sequence_parallel", True),
    "--virtual-pipeline-model-parallel-size": ("parallel.vpp", _vpp),
    "--num-virtual-stages-per-pipeline-rank": ("parallel.vpp", _vpp),
    "--num-layers-per-virtual-pipeline-stage": ("parallel.vpp", _vpp_from_layers_per_stage),
    "--pipeline-model-parallel-layout": ("parallel.pipeline_layout", str),
    "--decoder-first-pipeline-num-layers": ("parallel.decoder_first_pipeline_num_layers", int),
    "--decoder-last-pipeline-num-layers": ("parallel.decoder_last_pipeline_num_layers", int),
    "--use-megatron-fsdp": ("parallel.fsdp", lambda _v, a: _zero3(a)),
    "--use-torch-fsdp2": ("parallel.fsdp", lambda _v, a: _zero3(a)),
    "--data-parallel-sharding-strategy": ("parallel.fsdp", lambda _v, a: _zero3(a) and _fsdp_given(a)),
    # training
    "--hidden-dropout": ("model.hidden_dropout", float),
    "--attention-dropout": ("model.attention_dropout", float),
    "--train-iters": ("train.train_iters", int),
    "--train-samples": ("train.train_samples", int),
    "--rampup-batch-size": ("train.rampup_batch_size", lambda v, _a: tuple(int(x) for x in v)),
    "--step-batch-size-schedule": ("train.step_batch_size_schedule", lambda v, _a: " ".join(v)),
    "--micro-batch-size": ("train.micro_batch_size", int),
    "--global-batch-size": ("train.global_batch_size", int),
    "--seq-length": ("train.seq_length", int),
    "--seed": ("train.seed", int),
    "--log-interval": ("train.log_interval", int),
    "--eval-interval": ("train.eval_interval", int),
    "--eval-iters": ("train.eval_iters", int),
    "--recompute-granularity": ("train.recompute_granularity", str),
    "--recompute-modules": ("train.recompute_modules", list),
    "--moe-layer-recompute": ("train.recompute_modules", lambda _v, _a: ("moe",)),
    "--offload-modules": ("train.offload_modules", list),
    "--calculate-per-token-loss": ("train.calculate_per_token_loss", True),
    "--check-for-nan-in-loss-and-grad": ("train.check_for_nan_in_loss_and_grad", True),
    "--no-check-for-nan-in-loss-and-grad": ("train.check_for_nan_in_loss_and_grad", False),
    # optimizer
    "--exit-duration-in-mins": ("train.exit_duration_in_mins", float),
    "--exit-interval": ("train.exit_interval", int),
    "--lr": ("optim.lr", float),
    "--min-lr": ("optim.min_lr", float),
    "--decoupled-lr": ("optim.decoupled_lr", float),
    "--decoupled-min-lr": ("optim.decoupled_min_lr", float),
    "--lr-warmup-iters": ("optim.lr_warmup_iters", int),
    "--lr-warmup-samples": ("optim.lr_warmup_samples", int),
    "--lr-decay-iters": ("optim.lr_decay_iters", int),
    "--lr-decay-samples": ("optim.lr_decay_samples", int),
    "--lr-decay-style": ("optim.lr_decay_style", str),
    "--lr-warmup-init": ("optim.lr_warmup_init", float),
    "--lr-warmup-fraction": ("optim.lr_warmup_fraction", float),
    "--lr-wsd-decay-style": ("optim.lr_wsd_decay_style", str),
    "--lr-wsd-decay-iters": ("optim.lr_wsd_decay_iters", int),
    "--lr-wsd-decay-samples": ("optim.lr_wsd_decay_samples", int),
    "--weight-decay": ("optim.weight_decay", float),
    "--start-weight-decay": ("optim.start_weight_decay", float),
    "--end-weight-decay": ("optim.end_weight_decay", float),
    "--weight-decay-incr-style": ("optim.weight_decay_incr_style", str),
    "--adam-beta1": ("optim.adam_beta1", float),
    "--adam-beta2": ("optim.adam_beta2", float),
    "--adam-eps": ("optim.adam_eps", float),
    "--clip-grad": ("optim.clip_grad", float),
    "--optimizer": ("optim.optimizer", str),
    "--muon-momentum": ("optim.muon_momentum", float),
    "--muon-use-nesterov": ("optim.muon_use_nesterov", True),
    "--muon-num-ns-steps": ("optim.muon_num_ns_steps", int),
    "--muon-coefficient-type": ("optim.muon_coefficient_type", str),
    "--muon-fp32-matmul-prec": ("optim.muon_fp32_matmul_prec", str),
    "--muon-scale-mode": ("optim.muon_scale_mode", str),
    "--muon-extra-scale-factor": ("optim.muon_extra_scale_factor", float),
    "--muon-no-split-qkv": ("optim.muon_split_qkv", False),
    "--muon-tp-mode": ("optim.muon_tp_mode", str),
    "--use-distributed-optimizer": ("optim.use_distributed_optimizer", True),
    "--use-precision-aware-optimizer": ("optim.use_precision_aware_optimizer", True),
    "--main-grads-dtype": ("optim.main_grads_dtype", str),
    "--exp-avg-dtype": ("optim.exp_avg_dtype", str),
    "--exp-avg-sq-dtype": ("optim.exp_avg_sq_dtype", str),
    "--optimizer-cpu-offload": ("optim.optimizer_cpu_offload",
                                lambda _v, a: float(a.get("--optimizer-offload-fraction", 1.0))),
    "--optimizer-offload-fraction": ("optim.optimizer_cpu_offload",
                                     lambda v, a: float(v[0]) if "--optimizer-cpu-offload" in a else 0.0),
    # data
    "--data-path": ("data.path", list),
    "--split": ("data.split", str),
    "--data-cache-path": ("data.cache_dir", str),
    "--reset-position-ids": ("data.reset_position_ids", True),
    "--reset-attention-mask": ("data.reset_attention_mask", True),
    "--eod-mask-loss": ("data.eod_mask_loss", True),
    # checkpoints
    "--save-interval": ("checkpoint.save_interval", int),
    "--async-save": ("checkpoint.async_save", True),
    "--pretrained-checkpoint": ("checkpoint.load_params", str),
    "--finetune": ("checkpoint.load_params", lambda _v, a: a.get("--load", "")),
}

# Megatron's defaults where moejax's differ and the run depends on them: set before the script's values
MEGATRON_DEFAULTS = {
    "model.untie_embeddings_and_output_weights": False,  # Megatron ties unless --untie-embeddings-and-output-weights
    "optim.adam_beta2": 0.999,
    "optim.weight_decay": 0.01,
    "optim.min_lr": 0.0,
    "optim.lr_decay_style": "linear",
    "optim.use_distributed_optimizer": False,
    "train.check_for_nan_in_loss_and_grad": True,
    "moe.shared_expert_overlap": False,
    "model.cross_entropy_loss_fusion": False,
    "model.dtype": "float32",  # Megatron computes in fp32 unless --bf16 / --fp16
    "model.hidden_dropout": 0.1,
    "model.attention_dropout": 0.1,
}

_SAME = "moejax always does this"
_NO_FP8 = "NOT THE SAME RUN: FP8 is not in moejax yet (bf16 compute)"
_GRAPH = "XLA compiles the whole step into one program; there are no CUDA-graph settings"
_NO_LINEAR_ATTENTION = "NOT THE SAME RUN: linear attention (Qwen3-Next's gated DeltaNet layers) is not in moejax"
# arguments with no key, and why: what moejax does anyway, or what it does not do
UNMAPPED: dict[str, str] = {
    "--disable-bias-linear": f"{_SAME} (no biases on linear layers; QKV/output biases have their own keys)",
    "--swiglu": f"{_SAME} (SwiGLU MLPs)",
    "--group-query-attention": "makes Megatron read --num-query-groups (model.num_query_groups); without it every "
                               "query head has its own key/value head",
    "--no-position-embedding": f"{_SAME} (no learned absolute position embedding)",
    "--max-position-embeddings": "moejax has no learned position table; rotary positions need no maximum",
    "--use-mcore-models": f"{_SAME} (one model implementation)",
    "--transformer-impl": "moejax has one implementation (Flax, XLA/cuDNN/Pallas); Transformer Engine is not used",
    "--use-flash-attn": "model.attention_impl=auto picks cuDNN's flash attention on GPUs",
    "--no-masked-softmax-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--moe-permute-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--moe-router-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--cross-entropy-fusion-impl": "moejax's own fused head and loss (model.cross_entropy_loss_fusion); its softmax "
                                   "kernel is model.cross_entropy_fusion_impl (auto/pallas/xla)",
    "--overlap-grad-reduce": "XLA schedules the gradient reduce-scatter with the backward pass",
    "--overlap-param-gather": "XLA schedules the parameter all-gather with the forward pass",
    "--tp-comm-overlap": "XLA schedules tensor-parallel collectives; no separate switch",
    "--overlap-moe-expert-parallel-comm": "not in moejax (XLA overlaps what its scheduler can)",
    "--delay-wgrad-compute": "not in moejax",
    "--manual-gc": "no Python garbage collection in the jitted step",
    "--manual-gc-interval": "no Python garbage collection in the jitted step",
    "--distributed-timeout-minutes": "no process-group timeout in moejax",
    "--exit-signal-handler": "moejax always does this: on SIGTERM/SIGINT every process stops after the same step and "
                             "saves",
    "--num-workers": "the Grain loader's worker count is not a config key",
    "--no-mmap-bin-files": "moejax always memory-maps .bin files",
    "--no-create-attention-mask-in-dataloader": f"{_SAME} (masks are made in the model)",
    "--tokenizer-type": "moejax trains on tokenized .bin/.idx files; tokenize with python -m moejax.data.preprocess",
    "--tokenizer-model": "moejax trains on tokenized .bin/.idx files; tokenize with python -m moejax.data.preprocess",
    "--save": "the checkpoint directory is train.py's --workdir (WORKDIR/checkpoints)",
    "--load": "the checkpoint directory is train.py's --workdir (resumed from WORKDIR/checkpoints)",
    "--tensorboard-dir": "TensorBoard goes to WORKDIR/tensorboard (logging.tensorboard)",
    "--ckpt-format": "moejax checkpoints are Orbax",
    "--auto-detect-ckpt-format": "moejax checkpoints are Orbax",
    "--dist-ckpt-strictness": "moejax checkpoints are Orbax (restores verify shapes and checksums)",
    "--log-timers-to-tensorboard": "moejax logs step time, throughput and MFU always",
    "--log-memory-to-tensorboard": "the compiled step's memory is printed at start (memory_report)",
    "--log-validation-ppl-to-tensorboard": "eval_ppl is logged whenever train.eval_interval is set",
    "--log-throughput": "tokens_per_sec and tflops_per_device are logged always",
    "--logging-level": "not a moejax setting",
    "--enable-experimental": "not a moejax setting",
    "--moe-flex-dispatcher-backend": "DeepEP/HybridEP are not in moejax: alltoall is used",
    "--normalization": "moejax uses RMSNorm (only RMSNorm is the same model)",
    "--position-embedding-type": "moejax uses rotary embeddings (only rope is the same model)",
    "--moe-enable-deepep": "DeepEP is not in moejax: alltoall is used",
    "--fine-grained-activation-offloading": "implied by train.offload_modules (--offload-modules)",
    "--grad-reduce-in-fp32": "gradients are reduced in optim.main_grads_dtype (fp32 unless set)",
    "--num-distributed-optimizer-instances": "moejax's distributed optimizer shards over all of dp (one instance)",
    "--overlap-p2p-comm": "XLA schedules the pipeline sends",
    "--fake-init-process-group": "python -m moejax.plan estimates memory per GPU; train.py validates a layout "
                                 "without GPUs",
    "--no-gradient-accumulation-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--no-load-optim": "moejax resumes a run whole (WORKDIR/checkpoints) or starts one from weights with a fresh "
                       "optimizer (checkpoint.load_params, which --finetune and --pretrained-checkpoint set)",
    "--no-load-rng": "moejax's random keys come from the step (router jitter, forced balancing): nothing to load",
    "--no-save-optim": "moejax checkpoints always hold the optimizer state (checkpoint.load_params reads the weights "
                       "alone)",
    "--no-ckpt-fully-parallel-save": "moejax checkpoints are Orbax (every process writes its own shards)",
    "--account-for-embedding-in-pipeline-split": "changes only how layers are split into stages: write the split as "
                                                 "parallel.pipeline_layout (its E and L stand for the embedding and "
                                                 "the loss)",
    "--account-for-loss-in-pipeline-split": "changes only how layers are split into stages: write the split as "
                                            "parallel.pipeline_layout (its E and L stand for the embedding and the "
                                            "loss)",
    "--no-rope-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--no-bias-swiglu-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--no-bias-gelu-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--no-bias-dropout-fusion": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--no-persist-layer-norm": "a fusion choice of Megatron's kernels; XLA fuses on its own",
    "--rotary-seq-len-interpolation-factor": "moejax has no linear position interpolation (only 1 is the same model; "
                                             "YaRN is model.rope_type='yarn')",
    "--init-model-with-meta-device": "moejax initializes each parameter shard on its own device (jit with shardings)",
    "--fsdp-double-buffer": "a buffer choice of Megatron's FSDP; XLA schedules the parameter all-gathers",
    "--use-nccl-ub": "a buffer choice of Megatron's NCCL communication; XLA allocates collective buffers",
    "--megatron-fsdp-grad-comm-dtype": "gradients are reduced in optim.main_grads_dtype (fp32 unless set; bf16 "
                                       "with optim.use_precision_aware_optimizer)",
    "--megatron-fsdp-main-grads-dtype": "gradients are accumulated in optim.main_grads_dtype (fp32 unless set; bf16 "
                                        "with optim.use_precision_aware_optimizer)",
    "--wandb-project": "moejax logs to TensorBoard (logging.tensorboard) and metrics.jsonl, not to Weights & Biases",
    "--wandb-exp-name": "moejax logs to TensorBoard (logging.tensorboard) and metrics.jsonl, not to Weights & Biases",
    "--wandb-save-dir": "moejax logs to TensorBoard (logging.tensorboard) and metrics.jsonl, not to Weights & Biases",
    "--attention-output-gate": "NOT THE SAME RUN: the gated attention output (Qwen3-Next) is not in moejax",
    "--apply-layernorm-1p": "NOT THE SAME RUN: norms with zero-centered scales (1 + w) are not in moejax",
    "--no-weight-decay-cond-type": "NOT THE SAME RUN: moejax has one rule, Megatron's default (decay on matrices, "
                                   "not on norm scales or biases)",
    "--linear-attention-type": _NO_LINEAR_ATTENTION, "--linear-attention-freq": _NO_LINEAR_ATTENTION,
    "--linear-conv-kernel-dim": _NO_LINEAR_ATTENTION, "--linear-key-head-dim": _NO_LINEAR_ATTENTION,
    "--linear-value-head-dim": _NO_LINEAR_ATTENTION, "--linear-num-key-heads": _NO_LINEAR_ATTENTION,
    "--linear-num-value-heads": _NO_LINEAR_ATTENTION,
    "--fp8": _NO_FP8, "--fp8-format": _NO_FP8, "--fp8-recipe": _NO_FP8, "--fp8-param-gather": _NO_FP8,
    "--moe-router-padding-for-fp8": _NO_FP8, "--reuse-grad-buf-for-mxfp8-param-ag": _NO_FP8,
    "--cuda-graph-impl": _GRAPH, "--cuda-graph-modules": _GRAPH, "--cuda-graph-scope": _GRAPH,
    "--external-cuda-graph": _GRAPH, "--inference-cuda-graph-scope": _GRAPH, "--te-rng-track": _GRAPH,
}

# values of mapped flags that moejax takes differently, and what it does instead
_VALUE_FALLBACKS = {
    ("--moe-token-dispatcher-type", "flex"): ("alltoall", "the flex dispatcher (DeepEP/HybridEP) is not in "
                                                          "moejax: alltoall is used"),
}
# unmapped flags that are the same run only at these values
_ONLY_VALUES = {"--rotary-seq-len-interpolation-factor": ("1", "1.0"),
                "--normalization": ("RMSNorm",), "--position-embedding-type": ("rope",),
                "--megatron-fsdp-grad-comm-dtype": ("fp32",), "--megatron-fsdp-main-grads-dtype": ("fp32",)}
# Megatron's defaults that moejax does not have, named when no argument of the run replaces them
_MISSING_DEFAULTS = (
    (("--swiglu",), "(no --swiglu)", "NOT THE SAME RUN: Megatron's MLPs are then GeLU, not gated; moejax's are "
                                     "SwiGLU"),
    (("--normalization",), "(no --normalization)", "NOT THE SAME RUN: Megatron's default norm is LayerNorm; moejax "
                                                   "uses RMSNorm"),
    (("--position-embedding-type", "--use-rotary-position-embeddings"), "(no --position-embedding-type)",
     "NOT THE SAME RUN: Megatron's default is a learned absolute position table; moejax uses rotary embeddings"),
    (("--disable-bias-linear",), "(no --disable-bias-linear)", "NOT THE SAME RUN: Megatron's linear layers then "
                                                               "have biases; moejax's have none (attention biases: "
                                                               "model.add_qkv_bias, model.attention_output_bias)"),
)


@dataclasses.dataclass
class Conversion:
  values: dict        # config key → value, in the order set
  notes: list         # (argument as given, what happened to it)


def split_arguments(argv: list[str]) -> list[tuple[str, list[str]]]:
  """[(flag, its values)]: a flag takes the tokens up to the next `--flag` (`--x=v` too)."""
  out = []
  for tok in argv:
    if tok.startswith("--") and len(tok) > 2 and not _is_number(tok):
      flag, eq, value = tok.partition("=")
      out.append((flag, [value] if eq else []))
    elif out:
      out[-1][1].append(tok)
    else:
      out.append(("", [tok]))
  return out


def _derived_sizes(out: Conversion, seen: dict) -> None:
  """Sizes Megatron derives when the run gives none (moejax's base config would keep its own): the dense FFN
  width from the hidden size, and one key/value head per query head without --group-query-attention, which
  alone makes Megatron read --num-query-groups."""
  v = out.values
  if "--ffn-hidden-size" not in seen and isinstance(v.get("model.hidden_size"), int):
    h = v["model.hidden_size"]
    v["model.ffn_hidden_size"] = int(4 * h * 2 / 3 / 64) * 64 if "--swiglu" in seen else 4 * h
    out.notes.append(("(no --ffn-hidden-size)", f"Megatron's default from --hidden-size {h}: model.ffn_hidden_size="
                                                f"{v['model.ffn_hidden_size']} (4 x hidden; with --swiglu 2/3 of it, "
                                                "rounded down to a multiple of 64)"))
  heads = v.get("model.num_attention_heads")
  if "--group-query-attention" not in seen and "--multi-latent-attention" not in seen and isinstance(heads, int):
    if v.get("model.num_query_groups", heads) != heads:
      out.notes.append(("(no --group-query-attention)", f"Megatron reads --num-query-groups only with it: one "
                                                        f"key/value head per query head, model.num_query_groups={heads}"))
    v["model.num_query_groups"] = heads


def _is_number(tok: str) -> bool:
  try:
    float(tok)
    return True
  except ValueError:
    return False


def _value(flag: str, kind, values: list[str], seen: dict):
  if kind is True or kind is False:
    if values and values[0].lower() in ("true", "false"):  # `--flag true` (YAML-style scripts)
      return kind if values[0].lower() == "true" else not kind
    return kind
  if kind is list:
    return tuple(values)
  if kind not in (int, float, str):
    return kind(values, seen)
  if not values:
    raise ValueError(f"{flag} needs a value")
  return kind(values[0])


def convert(argv: list[str]) -> Conversion:
  """The config values of a Megatron argument list; every argument either sets a key or gets a note."""
  args = split_arguments(argv)
  seen = {flag: (vals[0] if vals else "") for flag, vals in args}
  out = Conversion(values=dict(MEGATRON_DEFAULTS), notes=[])
  if "--multi-latent-attention" in seen and "--rope-type" not in seen:
    out.values["model.rope_type"] = "yarn"  # Megatron: "MLA takes yarn by default"
  for flag, values in args:
    given = " ".join([flag] + values).strip()
    if flag in FLAGS:
      key, kind = FLAGS[flag]
      fallback = _VALUE_FALLBACKS.get((flag, values[0] if values else None))
      if fallback:
        out.values[key] = fallback[0]
        out.notes.append((given, f"{key}={fallback[0]!r}: {fallback[1]}"))
        continue
      try:
        out.values[key] = _value(flag, kind, values, seen)
      except ValueError as e:
        out.notes.append((given, f"not converted: {e}"))
      if flag == "--data-path":
        out.values["data.source"] = "indexed"
    elif flag in UNMAPPED:
      only = _ONLY_VALUES.get(flag)
      if only and values and values[0] not in only:
        out.notes.append((given, f"NOT THE SAME RUN: {UNMAPPED[flag]}"))
      else:
        out.notes.append((given, UNMAPPED[flag]))
    else:
      out.notes.append((given, "unknown to moejax: not converted"))
  if "--train-samples" in seen:
    out.values["train.train_iters"] = None  # sample-based training: the steps follow from the samples
  if "--moe-layer-recompute" in seen and "--recompute-granularity" not in seen:
    out.values["train.recompute_granularity"] = "selective"  # the MoE layer alone, as Megatron's flag
  if "--num-experts" in seen and "--moe-router-dtype" not in seen:
    out.notes.append(("(no --moe-router-dtype)", "Megatron's router then computes in the model's dtype; moejax's "
                                                "in fp32 at least (moe.router_dtype)"))
  out.notes.extend((given, why) for flags, given, why in _MISSING_DEFAULTS if not any(f in seen for f in flags))
  _derived_sizes(out, seen)
  if "--vocab-size" not in seen:
    out.notes.append(("(no --vocab-size)", "Megatron takes the vocabulary size from the tokenizer: set "
                                          "model.vocab_size (it is the base config's until then)"))
  return out
